"""SMA crossover in class mode: the runner builds the Backtest and sets parameters."""

import talib
from backtesting import Strategy
from backtesting.lib import crossover


class SmaCross(Strategy):
    fast = 10
    slow = 30

    def init(self):
        close = self.data.Close
        self.sma_fast = self.I(talib.SMA, close, self.fast)
        self.sma_slow = self.I(talib.SMA, close, self.slow)

    def next(self):
        if crossover(self.sma_fast, self.sma_slow):
            self.position.close()
            self.buy(size=0.95)
        elif crossover(self.sma_slow, self.sma_fast):
            self.position.close()
            self.sell(size=0.95)
