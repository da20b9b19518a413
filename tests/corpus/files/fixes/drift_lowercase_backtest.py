import pandas as pd
import talib
from backtesting import Backtest, Strategy

df = pd.read_csv("/home/trader/data/BTC-USD-15m.csv")
df.columns = df.columns.str.strip().str.lower()
df = df.loc[:, ~df.columns.str.contains("^unnamed")]
df["datetime"] = pd.to_datetime(df["datetime"])
df = df.set_index("datetime")
df["sma"] = df["close"].rolling(50).mean()


class AboveAverage(Strategy):
    def init(self):
        self.sma = self.I(talib.SMA, self.data.Close, 50)

    def next(self):
        if not self.position and self.data.Close[-1] > self.sma[-1]:
            self.buy(size=0.5)
        elif self.position and self.data.Close[-1] < self.sma[-1]:
            self.position.close()


bt = Backtest(df, AboveAverage, cash=100_000, commission=0.002)
stats = bt.run()
print(stats)
