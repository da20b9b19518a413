import pandas as pd
import talib
from backtesting import Backtest, Strategy
from backtesting.lib import crossover

data = pd.read_csv("/Users/someone/projects/moon-dev/src/data/rbi/BTC-USD-15m.csv", parse_dates=["datetime"], index_col="datetime")
data.columns = [c.strip().capitalize() for c in data.columns]
data = data[["Open", "High", "Low", "Close", "Volume"]]
data["datetime"] = pd.to_datetime(data["datetime"])
data = data.set_index("datetime")


class EmaCross(Strategy):
    def init(self):
        self.fast = self.I(talib.EMA, self.data.Close, 12)
        self.slow = self.I(talib.EMA, self.data.Close, 48)

    def next(self):
        if crossover(self.fast, self.slow):
            self.buy(size=0.5)
        elif crossover(self.slow, self.fast):
            self.position.close()


if __name__ == "__main__":
    bt = Backtest(data, EmaCross, cash=100_000, commission=0.001)
    stats = bt.run()
    print(stats)
