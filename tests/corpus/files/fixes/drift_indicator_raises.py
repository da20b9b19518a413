import pandas as pd
import talib
from backtesting import Strategy


class KeltnerBreak(Strategy):
    n = 20

    def init(self):
        self.mid = self.I(lambda: self.data.df["close"].ewm(span=self.n).mean().values, name="mid")
        self.atr = self.I(talib.ATR, self.data.High, self.data.Low, self.data.Close, self.n)

    def next(self):
        upper = self.mid[-1] + 2 * self.atr[-1]
        if not self.position and self.data.Close[-1] > upper:
            self.buy(size=0.5)
        elif self.position and self.data.Close[-1] < self.mid[-1]:
            self.position.close()
