import pandas as pd
import talib
from backtesting import Backtest, Strategy

df = pd.read_csv("/Users/someone/rbi/data/BTC-USD-15m.csv")
df.columns = df.columns.str.strip().str.lower()
df = df.drop(columns=[c for c in df.columns if "unnamed" in c])
df["datetime"] = pd.to_datetime(df["datetime"])
df = df.set_index("datetime").rename(columns=str.capitalize)


class MomentumPullback(Strategy):
    rsi_period = 14
    trend = 200

    def init(self):
        self.rsi = self.I(talib.RSI, self.data.Close, self.rsi_period)
        self.ema = self.I(talib.EMA, self.data.Close, self.trend)

    def next(self):
        # Written as if these were pandas Series
        price = self.data.Close.iloc[-1]
        recent_high = self.data.High.rolling(20).max().iloc[-1]
        if not self.position and price > self.ema.iloc[-1] and self.rsi.iloc[-1] < 35:
            self.buy(size=0.5, tp=recent_high * 1.01, sl=price * 0.97)


bt = Backtest(df, MomentumPullback, cash=1_000_000, commission=0.002)
print(bt.run())
