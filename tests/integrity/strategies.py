# mypy: disable-error-code="misc"
"""Honest strategies of the kinds real generated code uses, for the exactness tests.

Each exercises a different part of backtesting's broker: SL/TP brackets, limit and stop entries,
shorts, partial closes, trade_on_close, spread, hedging, exclusive orders, trades left open,
going bust. Kept small and deterministic; indicators come from TA-Lib as in generated code.
"""

from __future__ import annotations

from typing import Any

import talib
from backtesting import Strategy
from backtesting.lib import crossover


class SmaCross(Strategy):
    fast = 10
    slow = 30

    def init(self) -> None:
        self.a = self.I(talib.SMA, self.data.Close, self.fast)
        self.b = self.I(talib.SMA, self.data.Close, self.slow)

    def next(self) -> None:
        if crossover(self.a, self.b):
            self.position.close()
            self.buy(size=0.5)
        elif crossover(self.b, self.a):
            self.position.close()


class Brackets(Strategy):
    """Market entries with a stop-loss and a take-profit; long and short."""

    def init(self) -> None:
        self.rsi = self.I(talib.RSI, self.data.Close, 14)

    def next(self) -> None:
        price = self.data.Close[-1]
        if self.position:
            return
        if self.rsi[-1] < 30:
            self.buy(size=0.3, sl=price * 0.99, tp=price * 1.015)
        elif self.rsi[-1] > 70:
            self.sell(size=0.3, sl=price * 1.01, tp=price * 0.985)


class LimitStopEntries(Strategy):
    """Limit entries below the market, stop entries above it, stop-limit orders, all with brackets."""

    def init(self) -> None:
        self.sma = self.I(talib.SMA, self.data.Close, 20)

    def next(self) -> None:
        price = self.data.Close[-1]
        for order in list(self.orders):
            if not order.is_contingent:
                order.cancel()
        if self.position:
            if len(self.data) % 40 == 0:
                self.position.close()
            return
        phase = len(self.data) % 3
        if phase == 0:
            self.buy(size=0.4, limit=price * 0.998, sl=price * 0.98, tp=price * 1.01)
        elif phase == 1:
            self.buy(size=0.4, stop=price * 1.002, sl=price * 0.985)
        else:
            self.sell(size=0.4, stop=price * 0.998, limit=price * 0.9975, tp=price * 0.99)


class PartialCloses(Strategy):
    """Whole-unit entries scaled out in halves (position.close(0.5)), and trade.close on one trade."""

    def init(self) -> None:
        self.fast = self.I(talib.EMA, self.data.Close, 12)
        self.slow = self.I(talib.EMA, self.data.Close, 48)

    def next(self) -> None:
        if crossover(self.fast, self.slow):
            self.buy(size=8)
            self.buy(size=3, tag="second")
        elif self.position.is_long and len(self.data) % 25 == 0:
            self.position.close(0.5)
        elif crossover(self.slow, self.fast):
            if self.trades:
                self.trades[-1].close()
            self.position.close()


class Shorts(Strategy):
    """Reversals: a new order against the position closes it first (FIFO), then opens the rest."""

    def init(self) -> None:
        self.a = self.I(talib.SMA, self.data.Close, 15)
        self.b = self.I(talib.SMA, self.data.Close, 60)

    def next(self) -> None:
        if crossover(self.a, self.b):
            self.buy(size=6)
        elif crossover(self.b, self.a):
            self.sell(size=6)


class Pyramid(Strategy):
    """Adds to a position over time; with hedging, longs and shorts live side by side."""

    def init(self) -> None:
        self.rsi = self.I(talib.RSI, self.data.Close, 10)

    def next(self) -> None:
        if self.rsi[-1] < 35 and len(self.trades) < 6:
            self.buy(size=2)
        elif self.rsi[-1] > 65 and len(self.trades) < 6:
            self.sell(size=2)
        if len(self.data) % 97 == 0:
            for trade in self.trades[:2]:
                trade.close()


class HoldsToTheEnd(Strategy):
    """Buys and never sells: with finalize_trades=False the trades stay open at the end."""

    def init(self) -> None:
        self.sma = self.I(talib.SMA, self.data.Close, 50)

    def next(self) -> None:
        if len(self.trades) < 3 and self.data.Close[-1] > self.sma[-1]:
            self.buy(size=1)


class GoesBust(Strategy):
    """Shorts with 50× leverage into a rising market until the equity is gone."""

    def init(self) -> None:
        pass

    def next(self) -> None:
        if not self.position:
            self.sell(size=0.99)


class WarmedUpTrailing(Strategy):
    """A long warm-up (200 bars) and a trailing stop moved every bar."""

    def init(self) -> None:
        self.sma = self.I(talib.SMA, self.data.Close, 200)

    def next(self) -> None:
        price = self.data.Close[-1]
        if not self.position and price > self.sma[-1]:
            self.buy(size=0.5, sl=price * 0.99)
        for trade in self.trades:
            trade.sl = max(trade.sl or 0, price * 0.99)


# (strategy, Backtest options, rows of the bundled data)
CASES: dict[str, tuple[type[Strategy], dict[str, Any], int]] = {
    "sma_cross": (SmaCross, {}, 6000),
    "sl_tp_brackets": (Brackets, {}, 6000),
    "limit_stop_entries": (LimitStopEntries, {}, 6000),
    "partial_closes": (PartialCloses, {"commission": (2.0, 0.001)}, 6000),
    "shorts_reversals": (Shorts, {"commission": 0.0005}, 6000),
    "trade_on_close": (Brackets, {"trade_on_close": True}, 6000),
    "trade_on_close_limits": (LimitStopEntries, {"trade_on_close": True}, 6000),
    "trade_on_close_partial": (PartialCloses, {"trade_on_close": True}, 6000),
    "spread": (Shorts, {"spread": 0.0008}, 6000),
    "hedging": (Pyramid, {"hedging": True}, 6000),
    "exclusive_orders": (Shorts, {"exclusive_orders": True}, 6000),
    "open_at_the_end": (HoldsToTheEnd, {"finalize_trades": False}, 6000),
    "goes_bust": (GoesBust, {"margin": 0.02, "commission": 0.0}, 6000),
    "warm_up_trailing_stop": (WarmedUpTrailing, {"spread": 0.0002}, 6000),
}
