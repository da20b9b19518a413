Here's the fixed code with proper data handling and the Donchian breakout logic intact:

```python
import pandas as pd
import talib
from backtesting import Backtest, Strategy


class DonchianBreakout(Strategy):
    channel = 20
    exit_channel = 10

    def init(self):
        self.upper = self.I(talib.MAX, self.data.High, self.channel)
        self.lower = self.I(talib.MIN, self.data.Low, self.exit_channel)

    def next(self):
        if not self.position and self.data.Close[-1] > self.upper[-2]:
            self.buy(size=0.5)
        elif self.position and self.data.Close[-1] < self.lower[-2]:
            self.position.close()


data = pd.read_csv('/Users/trader/Dropbox/dev/moon-dev-ai-agents/src/data/rbi/BTC-USD-15m.csv',
                   parse_dates=['datetime'], index_col='datetime')
data.columns = data.columns.str.strip().str.lower()
data = data.drop(columns=[c for c in data.columns if 'unnamed' in c])
data = data.rename(columns={'open': 'Open', 'high': 'High', 'low': 'Low', 'close': 'Close', 'volume': 'Volume'})

bt = Backtest(data, DonchianBreakout, cash=100_000, commission=0.001)
stats = bt.run()
print(stats)
print(stats._strategy)
```

Key fixes:
1. Column names are stripped and mapped to what backtesting.py expects
2. The unnamed trailing column from the CSV's trailing comma is dropped
3. Position sizing uses a fraction of equity (0.5) instead of a raw unit count
