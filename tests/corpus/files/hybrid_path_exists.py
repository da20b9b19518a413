import os
import sys
from pathlib import Path

import pandas as pd
import talib
from backtesting import Backtest, Strategy

DATA_DIR = Path(__file__).resolve().parent / "data" / "rbi"
DATA_FILE = DATA_DIR / "BTC-USD-15m.csv"


class RsiReversion(Strategy):
    rsi_period = 14
    oversold = 30
    overbought = 70

    def init(self):
        self.rsi = self.I(talib.RSI, self.data.Close, self.rsi_period)

    def next(self):
        if self.rsi[-1] < self.oversold and not self.position:
            self.buy(size=0.25)
        elif self.rsi[-1] > self.overbought and self.position:
            self.position.close()


def prepare_data(path):
    if not os.path.exists(path):
        print(f"Data file not found: {path}")
        sys.exit(1)
    df = pd.read_csv(path, skipinitialspace=True)
    df = df.rename(columns=lambda c: c.strip())
    df = df[[c for c in df.columns if c]]
    df["datetime"] = pd.to_datetime(df["datetime"])
    df.set_index("datetime", inplace=True)
    df.rename(columns={"open": "Open", "high": "High", "low": "Low", "close": "Close", "volume": "Volume"},
              inplace=True)
    return df[["Open", "High", "Low", "Close", "Volume"]]


def main():
    data = prepare_data(DATA_FILE)
    print(f"Loaded {len(data)} bars")
    bt = Backtest(data, RsiReversion, cash=1_000_000, commission=.002)
    stats = bt.run()
    print(stats)


if __name__ == "__main__":
    main()
