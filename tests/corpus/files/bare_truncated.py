import pandas as pd
import talib
from backtesting import Backtest, Strategy


class AtrChannel(Strategy):
    period = 20

    def init(self):
        self.ema = self.I(talib.EMA, self.data.Close, self.period)
        self.atr = self.I(talib.ATR, self.data.High, self.data.Low, self.data.Close, self.period)

    def next(self):
        if self.data.Close[-1] > self.ema[-1] + 2 * self.atr[-1]:
            self.buy(size=0.5, sl=self.data.Close[-1] - 3 * self.atr[-1]
