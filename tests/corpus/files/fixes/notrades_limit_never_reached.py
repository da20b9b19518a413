import talib
from backtesting import Strategy


class DeepBid(Strategy):
    discount = 0.5

    def init(self):
        self.ma = self.I(talib.SMA, self.data.Close, 50)

    def next(self):
        if not self.position and not self.orders:
            # Bid half the price and wait.
            self.buy(size=0.5, limit=self.data.Close[-1] * self.discount)
