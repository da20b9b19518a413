import talib
from backtesting import Strategy


class StopManaged(Strategy):
    def init(self):
        self.ema = self.I(talib.EMA, self.data.Close, 40)
        self.atr = self.I(talib.ATR, self.data.High, self.data.Low, self.data.Close, 14)

    def next(self):
        price = self.data.Close[-1]
        if self.position:
            trail = price - 3 * self.atr[-1]
            if self.position.sl is None or trail > self.position.sl:
                self.position.sl = trail
        elif price > self.ema[-1]:
            self.buy(size=0.25)
            self.position.tp = price * 1.03
