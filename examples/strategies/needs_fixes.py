# Real generated code fails like this: a position size that is neither a fraction nor whole units,
# and Position.entry_price, which backtesting.py does not have. `rbi run --fix` repairs both.
import talib
from backtesting import Strategy
from backtesting.lib import crossover

class EntryPriceStrategy(Strategy):
    fast = 10
    slow = 40

    def init(self):
        self.a = self.I(talib.SMA, self.data.Close, self.fast)
        self.b = self.I(talib.SMA, self.data.Close, self.slow)

    def next(self):
        if crossover(self.a, self.b) and not self.position:
            self.buy(size=1.5)
        elif self.position and self.data.Close[-1] < self.position.entry_price * 0.97:
            self.position.close()
        elif crossover(self.b, self.a):
            self.position.close()
