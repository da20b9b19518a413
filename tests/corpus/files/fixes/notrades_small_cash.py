import pandas as pd
import talib
from backtesting import Backtest, Strategy

data = pd.read_csv("/Users/alex/trading/data/BTC-USD-15m.csv")
data.columns = [c.strip().lower() for c in data.columns]
data = data.rename(columns={"open": "Open", "high": "High", "low": "Low", "close": "Close", "volume": "Volume"})
data = data[["datetime", "Open", "High", "Low", "Close", "Volume"]]
data["datetime"] = pd.to_datetime(data["datetime"])
data = data.set_index("datetime")


class RsiDip(Strategy):
    def init(self):
        self.rsi = self.I(talib.RSI, self.data.Close, 14)

    def next(self):
        if not self.position and self.rsi[-1] < 30:
            self.buy()
        elif self.position and self.rsi[-1] > 70:
            self.position.close()


bt = Backtest(data, RsiDip, cash=10_000, commission=0.001)
print(bt.run())
