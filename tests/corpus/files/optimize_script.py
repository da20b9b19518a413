import pandas as pd
import talib
from backtesting import Backtest, Strategy

data_path = "/Users/moondev/github/moon-dev-ai-agents-for-trading/src/data/rbi/BTC-USD-15m.csv"
data = pd.read_csv(data_path)
data.columns = data.columns.str.strip().str.lower()
data = data.drop(columns=[col for col in data.columns if "unnamed" in col.lower()])
data = data.rename(columns={"datetime": "Datetime", "open": "Open", "high": "High", "low": "Low",
                            "close": "Close", "volume": "Volume"})
data["Datetime"] = pd.to_datetime(data["Datetime"])
data = data.set_index("Datetime")


class CciSwing(Strategy):
    period = 20
    level = 100

    def init(self):
        self.cci = self.I(talib.CCI, self.data.High, self.data.Low, self.data.Close, self.period)

    def next(self):
        if self.cci[-2] < -self.level <= self.cci[-1] and not self.position:
            self.buy(size=0.5)
        elif self.cci[-1] > self.level and self.position:
            self.position.close()


bt = Backtest(data, CciSwing, cash=1_000_000, commission=0.002)
stats = bt.run()
print(stats)
optimized = bt.optimize(period=range(14, 35, 7), level=[80, 100, 120], maximize="Return [%]")
print(optimized)
print(optimized._strategy)
