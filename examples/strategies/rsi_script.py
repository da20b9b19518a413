# A whole script as an LLM research pipeline writes it: it loads its own CSV from a
# path on someone else's laptop, cleans the columns itself, runs and prints the stats.
import pandas as pd
import talib
from backtesting import Backtest, Strategy

data_path = "/Users/moondev/Documents/src/data/rbi/BTC-USD-15m.csv"
data = pd.read_csv(data_path)
data.columns = data.columns.str.strip().str.lower()
data = data.drop(columns=[c for c in data.columns if "unnamed" in c])
data = data.rename(columns={"open": "Open", "high": "High", "low": "Low", "close": "Close", "volume": "Volume"})
data["datetime"] = pd.to_datetime(data["datetime"])
data = data.set_index("datetime")


class RsiReversion(Strategy):
    rsi_period = 14
    oversold = 30
    overbought = 70

    def init(self):
        self.rsi = self.I(talib.RSI, self.data.Close, self.rsi_period)

    def next(self):
        if not self.position and self.rsi[-1] < self.oversold:
            print(f"🌙 Moon Dev entry signal at {self.data.index[-1]}, RSI={self.rsi[-1]:.1f}")
            self.buy(size=0.5, sl=self.data.Close[-1] * 0.97)
        elif self.position and self.rsi[-1] > self.overbought:
            self.position.close()


bt = Backtest(data, RsiReversion, cash=1_000_000, commission=0.002)
stats = bt.run()
print(stats)
print(stats._strategy)
