import json
import pandas as pd
import pandas_ta as ta
from backtesting import Backtest, Strategy

df = pd.read_csv("BTC-USD-15m.csv")
df.columns = [c.strip() for c in df.columns]
df = df[[c for c in df.columns if not c.startswith("Unnamed")]]
df["datetime"] = pd.to_datetime(df["datetime"])
df = df.set_index("datetime").rename(columns=str.capitalize)
h, l, c = df["High"], df["Low"], df["Close"]

out = {
    "rsi": ta.rsi(c, length=14),
    "ema": ta.ema(c, length=50),
    "sma": ta.sma(c, length=200),
    "atr": ta.atr(h, l, c, length=14),
}
frames = {
    "bbands": ta.bbands(c, length=20, std=2),
    "adx": ta.adx(h, l, c, length=14),
    "supertrend": ta.supertrend(h, l, c, length=10, multiplier=3),
    "macd": ta.macd(c, fast=12, slow=26, signal=9),
    "stoch": ta.stoch(h, l, c),
}
df.ta.rsi(length=7, append=True)
summary = {name: [float(s.iloc[-1]), int(s.isna().sum())] for name, s in out.items()}
summary["accessor"] = [float(df["RSI_7"].iloc[-1]), int(df["RSI_7"].isna().sum())]
for name, frame in frames.items():
    summary[name] = {col: [float(frame[col].iloc[-1]), int(frame[col].isna().sum())] for col in frame.columns}
print("PANDAS_TA " + json.dumps(summary))


class Hold(Strategy):
    def init(self):
        pass

    def next(self):
        if not self.position:
            self.buy(size=0.1)


print(Backtest(df.iloc[:500], Hold, cash=1_000_000).run())
