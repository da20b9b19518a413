# Volume-weighted momentum on BTC 15m
import pandas as pd
import numpy as np
import talib
from backtesting import Backtest, Strategy

DATA_PATH = "/Users/quant/Desktop/rbi/data/BTC-USD-15m.csv"

data = pd.read_csv(DATA_PATH)
data.columns = data.columns.str.strip().str.lower()
data = data.drop(columns=[c for c in data.columns if "unnamed" in c])
data["datetime"] = pd.to_datetime(data["datetime"])
data = data.set_index("datetime")
data["vwap_gap"] = (data["close"] - data["close"].rolling(96).mean()) / data["close"]
ohlcv = data[["Open", "High", "Low", "Close", "Volume"]]


class VolumeMomentum(Strategy):
    fast = 8
    slow = 34

    def init(self):
        self.fast_ma = self.I(talib.EMA, self.data.Close, self.fast)
        self.slow_ma = self.I(talib.EMA, self.data.Close, self.slow)
        self.vol = self.I(talib.SMA, self.data.Volume, 20)

    def next(self):
        if not self.position and self.fast_ma[-1] > self.slow_ma[-1] and self.data.Volume[-1] > self.vol[-1]:
            self.buy(size=0.3)
        elif self.position and self.fast_ma[-1] < self.slow_ma[-1]:
            self.position.close()


bt = Backtest(ohlcv, VolumeMomentum, cash=1_000_000, commission=0.002)
stats = bt.run()
print(stats)
print(stats._strategy)
