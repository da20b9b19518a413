from backtesting import Strategy
from backtesting.lib import crossover
import talib


class MacdMomentum(Strategy):
    fast = 12
    slow = 26
    signal = 9

    def init(self):
        self.macd, self.macd_signal, _ = self.I(talib.MACD, self.data.Close, self.fast, self.slow, self.signal)

    def next(self):
        if crossover(self.macd, self.macd_signal):
            self.position.close()
            self.buy(size=0.2)
        elif crossover(self.macd_signal, self.macd):
            self.position.close()
