import pandas as pd
import talib
from backtesting import Backtest, Strategy

def load_data(path):
    df = pd.read_csv(path, index_col="datetime", parse_dates=True)
    df.columns = [c.strip().title() for c in df.columns]
    df = df[[c for c in df.columns if not c.startswith("Unnamed")]]
    df.set_index("datetime", inplace=True)
    return df


class DonchianBreak(Strategy):
    window = 55

    def init(self):
        self.upper = self.I(talib.MAX, self.data.High, self.window)
        self.lower = self.I(talib.MIN, self.data.Low, self.window)

    def next(self):
        if not self.position and self.data.Close[-1] >= self.upper[-2]:
            self.buy(size=0.5)
        elif self.position and self.data.Close[-1] <= self.lower[-2]:
            self.position.close()


if __name__ == "__main__":
    data = load_data("BTC-USD-15m.csv")
    bt = Backtest(data, DonchianBreak, cash=500_000, commission=0.001)
    print(bt.run())
