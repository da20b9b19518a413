import pandas as pd
import talib
from backtesting import Backtest, Strategy

df = pd.read_csv("data/BTC-USD-15m.csv", parse_dates=["datetime"], index_col="datetime")
df.columns = df.columns.str.strip().str.capitalize()
df = df[["Open", "High", "Low", "Close", "Volume"]]
df = df.loc["2023-11-19":]  # the last two days, to test quickly


class DailyTrend(Strategy):
    def init(self):
        self.daily_ma = self.I(talib.SMA, self.data.Close, 4 * 24 * 2)

    def next(self):
        if not self.position and self.data.Close[-1] > self.daily_ma[-1]:
            self.buy(size=0.5)
        elif self.position and self.data.Close[-1] < self.daily_ma[-1]:
            self.position.close()


bt = Backtest(df, DailyTrend, cash=1_000_000, commission=0.001)
stats = bt.run()
print(stats)
