import talib
from backtesting import Strategy


class TrailingBreakout(Strategy):
    lookback = 20
    risk = 0.02

    def init(self):
        self.hi = self.I(talib.MAX, self.data.High, self.lookback)
        self.atr = self.I(talib.ATR, self.data.High, self.data.Low, self.data.Close, 14)

    def next(self):
        price = self.data.Close[-1]
        if not self.position:
            if price >= self.hi[-2]:
                self.buy(size=0.5)
                self.position.sl = price - 2 * self.atr[-1]
                self.position.tp = price + 4 * self.atr[-1]
        else:
            new_sl = price - 2 * self.atr[-1]
            if self.position.sl is not None and new_sl > self.position.sl:
                self.position.sl = new_sl
