# -*- coding: utf-8 -*-
"""EMA ribbon trend follower, 15m BTC."""
import numpy as np
import pandas as pd
import talib
from backtesting import Backtest, Strategy
from backtesting.lib import crossover


def load(path):
    df = pd.read_csv(path)
    df.columns = [c.strip().lower() for c in df.columns]
    df = df.loc[:, ~df.columns.str.contains('^unnamed')]
    df['datetime'] = pd.to_datetime(df['datetime'])
    df = df.set_index('datetime')
    df.columns = [c.capitalize() for c in df.columns]
    return df


class EmaRibbon(Strategy):
    fast = 12
    slow = 48
    atr_mult = 2.5

    def init(self):
        close = self.data.Close
        self.ema_fast = self.I(talib.EMA, close, self.fast)
        self.ema_slow = self.I(talib.EMA, close, self.slow)
        self.atr = self.I(talib.ATR, self.data.High, self.data.Low, close, 14)

    def next(self):
        price = self.data.Close[-1]
        if crossover(self.ema_fast, self.ema_slow) and not self.position:
            self.buy(size=0.3, sl=price - self.atr_mult * self.atr[-1])
        elif crossover(self.ema_slow, self.ema_fast) and self.position:
            self.position.close()


if __name__ == "__main__":
    data = load("/home/quant/projects/rbi/data/BTC-USD-15m.csv")
    bt = Backtest(data, EmaRibbon, cash=50_000, commission=0.0015, exclusive_orders=True)
    stats = bt.run()
    print(stats)
