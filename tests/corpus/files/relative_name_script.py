import pandas as pd
import numpy as np
from backtesting import Backtest, Strategy


def SMA(values, n):
    return pd.Series(values).rolling(n).mean().values


class SmaCross(Strategy):
    n1 = 10
    n2 = 40

    def init(self):
        self.sma1 = self.I(SMA, self.data.Close, self.n1)
        self.sma2 = self.I(SMA, self.data.Close, self.n2)

    def next(self):
        if self.sma1[-2] < self.sma2[-2] and self.sma1[-1] > self.sma2[-1]:
            self.position.close()
            self.buy(size=0.4)
        elif self.sma1[-2] > self.sma2[-2] and self.sma1[-1] < self.sma2[-1]:
            self.position.close()
            self.sell(size=0.4)


df = pd.read_csv("BTC-USD-15m.csv", index_col=0, parse_dates=True)
df.columns = df.columns.str.strip()
df = df.dropna(axis=1, how="all")
df = df.rename(columns=str.title)
bt = Backtest(df, SmaCross, cash=10_000_000, commission=0.001, finalize_trades=True)
output = bt.run()
print(output)
print("Return:", output["Return [%]"])
