import pandas as pd
import talib
from backtesting import Strategy


def bands(close, n=20, k=2.0):
    s = pd.Series(close)
    mid = s.rolling(n).mean()
    sd = s.rolling(n).std()
    return pd.DataFrame({"upper": mid + k * sd, "mid": mid, "lower": mid - k * sd})


def momentum(close, n=10):
    return list(pd.Series(close).diff(n))


def trimmed_rsi(close, n=14):
    return talib.RSI(close, n)[n:]


class MeanRevert(Strategy):
    def init(self):
        self.bb = self.I(bands, self.data.Close)
        self.mom = self.I(momentum, self.data.Close)
        self.rsi = self.I(trimmed_rsi, self.data.Close)

    def next(self):
        upper, mid, lower = self.bb
        if not self.position and self.data.Close[-1] < lower[-1] and self.rsi[-1] < 35:
            self.buy(size=0.4)
        elif self.position and (self.data.Close[-1] > mid[-1] or self.mom[-1] < 0):
            self.position.close()
