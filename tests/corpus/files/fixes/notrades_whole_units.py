import talib
from backtesting import Strategy
from backtesting.lib import crossover


class FixedLotCross(Strategy):
    lot = 100  # BTC per trade

    def init(self):
        self.fast = self.I(talib.SMA, self.data.Close, 20)
        self.slow = self.I(talib.SMA, self.data.Close, 80)

    def next(self):
        if crossover(self.fast, self.slow):
            self.buy(size=self.lot)
        elif crossover(self.slow, self.fast):
            self.sell(size=self.lot)
