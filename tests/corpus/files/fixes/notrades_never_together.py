import talib
from backtesting import Strategy


class ExtremeConfluence(Strategy):
    def init(self):
        close = self.data.Close
        self.rsi_fast = self.I(talib.RSI, close, 3)
        self.rsi_slow = self.I(talib.RSI, close, 50)
        self.trend = self.I(talib.EMA, close, 200)

    def next(self):
        # Deeply oversold on the fast RSI while the slow one is euphoric, above the trend.
        if not self.position and self.rsi_fast[-1] < 1 and self.rsi_slow[-1] > 90 \
                and self.data.Close[-1] > self.trend[-1]:
            self.buy(size=0.5)
        elif self.position and self.rsi_fast[-1] > 80:
            self.position.close()
