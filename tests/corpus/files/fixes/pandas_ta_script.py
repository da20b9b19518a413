import pandas as pd
import pandas_ta as ta
from pandas_ta import rsi, ema
from backtesting import Backtest, Strategy
from backtesting.lib import crossover

df = pd.read_csv("/Users/trader/moon/data/BTC-USD-15m.csv")
df.columns = df.columns.str.strip()
df = df.loc[:, ~df.columns.str.contains("^Unnamed")]
df = df.rename(columns={"open": "Open", "high": "High", "low": "Low", "close": "Close", "volume": "Volume"})
df["datetime"] = pd.to_datetime(df["datetime"])
df = df.set_index("datetime")
df.ta.atr(length=14, append=True)
st = ta.supertrend(df["High"], df["Low"], df["Close"], length=10, multiplier=3.0)
df["trend"] = st["SUPERTd_10_3.0"]


class SupertrendRsi(Strategy):
    def init(self):
        self.rsi = self.I(rsi, self.data.Close.s, length=14)
        self.ema = self.I(ema, self.data.Close.s, length=100)
        self.trend = self.I(lambda: self.data.df["trend"].values)
        self.atr = self.I(lambda: self.data.df["ATRr_14"].values)

    def next(self):
        price = self.data.Close[-1]
        if not self.position and self.trend[-1] > 0 and price > self.ema[-1] and self.rsi[-1] < 60:
            self.buy(size=0.2, sl=price - 3 * self.atr[-1])
        elif self.position and (self.trend[-1] < 0 or self.rsi[-1] > 75):
            self.position.close()


bt = Backtest(df, SupertrendRsi, cash=1_000_000, commission=0.002)
stats = bt.run()
print(stats)
