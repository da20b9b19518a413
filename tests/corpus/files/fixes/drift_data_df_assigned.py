import talib
from backtesting import Strategy


class CleanedData(Strategy):
    def init(self):
        df = self.data.df.copy()
        df["Close"] = df["Close"].ffill()
        self.data.df = df
        self.ma = self.I(talib.SMA, self.data.Close, 30)

    def next(self):
        if not self.position and self.data.Close[-1] > self.ma[-1]:
            self.buy(size=0.5)
        elif self.position and self.data.Close[-1] < self.ma[-1]:
            self.position.close()
