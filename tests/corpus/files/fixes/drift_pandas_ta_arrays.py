import pandas_ta as ta
from backtesting import Strategy
from backtesting.lib import crossover


class RsiEmaTrend(Strategy):
    rsi_period = 14
    ema_period = 100

    def init(self):
        self.rsi = self.I(ta.rsi, self.data.Close, length=self.rsi_period)
        self.ema = self.I(ta.ema, self.data.Close, length=self.ema_period)
        self.atr = self.I(lambda: ta.atr(self.data.High, self.data.Low, self.data.Close, length=14))

    def next(self):
        if not self.position and self.data.Close[-1] > self.ema[-1] and crossover(self.rsi, 50):
            self.buy(size=0.3, sl=self.data.Close[-1] - 2 * self.atr[-1])
        elif self.position and self.rsi[-1] > 75:
            self.position.close()
