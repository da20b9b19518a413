Here's the backtest implementation for the VWAP reversion idea:

```python
import pandas as pd
import numpy as np
import talib
from backtesting import Backtest, Strategy


class VwapReversion(Strategy):
    lookback = 96
    band = 0.01

    def init(self):
        typical = (self.data.High + self.data.Low + self.data.Close) / 3
        self.vwap = self.I(lambda t, v: pd.Series(t * v).rolling(self.lookback).sum() / pd.Series(v).rolling(self.lookback).sum(),
                           typical, self.data.Volume)

    def next(self):
        price = self.data.Close[-1]
        if not self.position and price < self.vwap[-1] * (1 - self.band):
            self.buy(size=0.5, tp=self.vwap[-1], sl=price * (1 - 2 * self.
