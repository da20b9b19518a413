import os

import matplotlib.pyplot as plt
import pandas as pd
import talib
from backtesting import Backtest, Strategy

BASE = "/Users/analyst/code/rbi-pipeline"
DATA_PATH = os.path.join(BASE, "data", "BTC-USD-15m.csv")
RESULTS_DIR = os.path.join(BASE, "results", "keltner")


class KeltnerPullback(Strategy):
    ema_period = 30
    atr_period = 14
    mult = 1.5

    def init(self):
        close = self.data.Close
        self.mid = self.I(talib.EMA, close, self.ema_period)
        self.atr = self.I(talib.ATR, self.data.High, self.data.Low, close, self.atr_period)

    def next(self):
        lower = self.mid[-1] - self.mult * self.atr[-1]
        if not self.position and self.data.Low[-1] < lower and self.data.Close[-1] > lower:
            price = self.data.Close[-1]
            self.buy(size=0.5, tp=price + 2 * self.atr[-1], sl=price - 2 * self.atr[-1])


df = pd.read_csv(DATA_PATH)
df.columns = df.columns.str.strip()
df = df[[c for c in df.columns if not c.startswith("Unnamed")]]
df["datetime"] = pd.to_datetime(df["datetime"])
df = df.set_index("datetime").rename(columns=str.capitalize)

bt = Backtest(df, KeltnerPullback, cash=1_000_000, commission=0.002)
stats = bt.run()
print(stats)

os.makedirs(RESULTS_DIR, exist_ok=True)
stats.drop(["_strategy", "_equity_curve", "_trades"]).to_csv(os.path.join(RESULTS_DIR, "stats.csv"))
stats["_trades"].to_csv(os.path.join(RESULTS_DIR, "trades.csv"), index=False)
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "last_run.txt"), "w") as handle:
    handle.write(f"{stats['Return [%]']:.4f}\n")
stats["_equity_curve"]["Equity"].plot()
plt.savefig(os.path.join(RESULTS_DIR, "equity.png"))
# Read back what was just written: it must be the file written, not the dataset.
saved = pd.read_csv(os.path.join(RESULTS_DIR, "trades.csv"))
print(f"saved {len(saved)} trades")
