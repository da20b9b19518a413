import numpy as np
import pandas as pd
import talib
from backtesting import Strategy


def zscore(close, window=96):
    s = pd.Series(close)
    # The author meant a rolling standard deviation; std of a single value is NaN.
    return ((s - s.rolling(window).mean()) / s.rolling(1).std()).values


class ZScoreRevert(Strategy):
    def init(self):
        self.z = self.I(zscore, self.data.Close)
        self.atr = self.I(talib.ATR, self.data.High, self.data.Low, self.data.Close, 14)

    def next(self):
        if not self.position and self.z[-1] < -2:
            self.buy(size=0.5)
        elif self.position and self.z[-1] > 0:
            self.position.close()
