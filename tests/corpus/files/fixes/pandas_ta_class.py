import pandas as pd
import pandas_ta as ta
from backtesting import Strategy
from backtesting.lib import crossover


class TrendBands(Strategy):
    rsi_len = 14
    bb_len = 20

    def init(self):
        close = self.data.Close.s
        high, low = self.data.High.s, self.data.Low.s
        self.rsi = self.I(ta.rsi, close, length=self.rsi_len)
        bands = ta.bbands(close, length=self.bb_len, std=2)
        self.lower = self.I(lambda: bands[f"BBL_{self.bb_len}_2.0"].values)
        self.upper = self.I(lambda: bands[f"BBU_{self.bb_len}_2.0"].values)
        self.atr = self.I(ta.atr, high, low, close, length=14)
        adx = ta.adx(high, low, close)
        self.adx = self.I(lambda: adx["ADX_14"].values)
        st = ta.supertrend(high, low, close, length=10, multiplier=3)
        self.trend = self.I(lambda: st["SUPERTd_10_3.0"].values)
        self.ema = self.I(ta.ema, close, 50)
        self.sma = self.I(ta.sma, close, 200)
        macd = ta.macd(close)
        self.macd = self.I(lambda: macd["MACD_12_26_9"].values)
        self.signal = self.I(lambda: macd["MACDs_12_26_9"].values)
        k = ta.stoch(high, low, close)
        self.k = self.I(lambda: k["STOCHk_14_3_3"].values)
        df = self.data.df.copy()
        df.ta.rsi(length=7, append=True)
        self.rsi7 = self.I(lambda: df["RSI_7"].values)

    def next(self):
        if not self.position and self.trend[-1] > 0 and self.rsi[-1] < 45 and self.adx[-1] > 20:
            self.buy(size=0.3, sl=self.data.Close[-1] - 2 * self.atr[-1])
        elif self.position and (crossover(self.signal, self.macd) or self.data.Close[-1] > self.upper[-1]):
            self.position.close()
