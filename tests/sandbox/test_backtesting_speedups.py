"""rbi.compat.backtesting_speedups changes nothing but speed: real backtests, compared bit for bit.

Every case runs the same strategy source twice on real data: once with the speedups uninstalled
and once installed, each time in a fresh module imported *after* the switch (strategies bind
`crossover` at import, as they do in the sandbox, where the worker installs before any strategy is
imported). The two runs must give identical statistics (every field; floats compared by bit
pattern), identical trades and equity curves, identical warnings, the same exception when the
original raises, and identical values for anything the strategy logged while it ran.
"""

from __future__ import annotations

import ast
import functools
import inspect
import math
import subprocess
import sys
import textwrap
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import backtesting
import backtesting._util as bt_util
import backtesting.backtesting as bt_core
import backtesting.lib as bt_lib
import numpy as np
import pandas as pd
import pytest
from backtesting import Backtest, Strategy
from backtesting.lib import FractionalBacktest
from backtesting.test import BTCUSD, EURUSD, GOOG

from rbi.compat import backtesting_speedups as speedups
from rbi.datasets import bundled_dataset
from rbi.prepare.data import load_ohlcv

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "strategies"


@pytest.fixture(autouse=True)
def _uninstalled() -> Iterator[None]:
    speedups.uninstall()
    yield
    speedups.uninstall()


@functools.cache
def btc_15m() -> pd.DataFrame:
    return load_ohlcv(str(bundled_dataset("BTC-USD-15m")))


def btc_15m_head() -> pd.DataFrame:
    return btc_15m().iloc[:6000]


# --------------------------------------------------------------------------- running and comparing


@dataclass
class Outcome:
    stats: pd.Series | None
    error: tuple[type[BaseException], str] | None
    warnings: list[tuple[type[Warning], str]] = field(default_factory=list)
    log: str | None = None


HEADER = """
import numpy as np
import pandas as pd
import talib
from backtesting import Strategy
from backtesting.lib import (SignalStrategy, TrailingStrategy, barssince, cross, crossover,
                             resample_apply)
"""


def load_strategy(source: str, name: str) -> type[Strategy]:
    """Import `source` as a fresh module (binding whatever backtesting.lib.crossover is now)."""
    module = types.ModuleType(f"speedups_case_{name}")
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    found = [value for value in vars(module).values()
             if isinstance(value, type) and issubclass(value, Strategy) and value.__module__ == module.__name__]
    assert len(found) == 1, found
    return found[0]


def run_once(source: str, data: pd.DataFrame, *, installed: bool, backtest: type[Backtest] = Backtest,
             run_kwargs: dict[str, Any] | None = None, **options: Any) -> Outcome:
    if installed:
        speedups.install()
    else:
        speedups.uninstall()
    strategy = load_strategy(source, "on" if installed else "off")
    bt = backtest(data, strategy, **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            stats = bt.run(**(run_kwargs or {}))
        except Exception as exc:
            outcome = Outcome(None, (type(exc), str(exc)))
        else:
            outcome = Outcome(stats, None, log=repr(getattr(stats._strategy, "log", None)))
    outcome.warnings = [(w.category, str(w.message)) for w in caught]
    speedups.uninstall()
    return outcome


def same_scalar(a: Any, b: Any, what: str) -> None:
    assert type(a) is type(b), (what, type(a), type(b))
    if isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or a.hex() == b.hex(), (what, a, b)
    else:
        assert (a is b) or (a == b) or (a != a and b != b), (what, a, b)


def same_frame(a: pd.DataFrame, b: pd.DataFrame, what: str) -> None:
    pd.testing.assert_frame_equal(a, b, check_exact=True, obj=what)
    for column in a.columns:
        left, right = a[column].to_numpy(), b[column].to_numpy()
        if left.dtype.kind == "f":  # assert_frame_equal calls 0.0 and -0.0 equal; bit patterns do not
            assert np.array_equal(left.view(np.int64), right.view(np.int64)), (what, column)
        elif left.dtype == object:
            for i, (x, y) in enumerate(zip(left, right, strict=True)):
                same_scalar(x, y, f"{what}[{column}][{i}]")


def assert_same(off: Outcome, on: Outcome) -> None:
    assert on.error == off.error
    assert on.warnings == off.warnings
    if off.stats is None:
        assert on.stats is None
        return
    assert on.stats is not None
    assert list(on.stats.index) == list(off.stats.index)
    for key in off.stats.index:
        a, b = off.stats[key], on.stats[key]
        if key in ("_trades", "_equity_curve"):
            same_frame(a, b, key)
        elif key == "_strategy":
            assert str(a) == str(b)
        else:
            same_scalar(a, b, key)
    assert on.log == off.log


def compare(source: str, data: pd.DataFrame, **options: Any) -> Outcome:
    off = run_once(source, data, installed=False, **options)
    on = run_once(source, data, installed=True, **options)
    assert_same(off, on)
    return off


# --------------------------------------------------------------------------- strategies


SMA_CROSS = HEADER + """
class S(Strategy):
    fast = 10
    slow = 30

    def init(self):
        self.a = self.I(talib.SMA, self.data.Close, self.fast)
        self.b = self.I(talib.SMA, self.data.Close, self.slow)

    def next(self):
        if crossover(self.a, self.b):
            self.position.close()
            self.buy(size=0.95)
        elif crossover(self.b, self.a):
            self.position.close()
            self.sell(size=0.95)
"""

# crossover with every kind of argument a strategy passes; what it returned is compared (with types).
CROSSOVER_INPUTS = HEADER + """
class S(Strategy):
    def init(self):
        self.a = self.I(talib.SMA, self.data.Close, 10)
        self.b = self.I(talib.SMA, self.data.Close, 20)
        self.rsi = self.I(talib.RSI, self.data.Close, 14)
        self.log = []

    def next(self):
        c = self.data.Close
        r = (crossover(self.a, self.b), crossover(c, self.a), crossover(self.a, float(c[-1])),
             crossover(np.asarray(self.a), np.asarray(self.b)), crossover(list(self.a[-3:]), list(self.b[-3:])),
             crossover(self.a[-1:], self.b), crossover(self.a, self.b[-1:]), crossover(c, c[-1]),
             crossover(self.rsi, 50), crossover(70, self.rsi), crossover(self.a[-2:], tuple(self.b[-2:])),
             crossover(self.a[:0], self.b), crossover(c.astype(np.float32), self.a), crossover(c > self.a, 0.5),
             crossover(self.data.Volume, self.a), cross(self.a, self.b), crossover(self.a, np.int64(100)))
        if len(self.data) % 5 == 0:
            r += (crossover(c.s, self.a.s), crossover(pd.Series(self.a), self.b), crossover(c.s, 100.0))
        self.log.append(r)
        if r[0]:
            self.buy(size=0.2)
        elif crossover(self.b, self.a):
            self.position.close()
"""

ORDERS = HEADER + """
class S(Strategy):
    def init(self):
        self.a = self.I(talib.SMA, self.data.Close, 10)
        self.b = self.I(talib.SMA, self.data.Close, 40)

    def next(self):
        close = self.data.Close[-1]
        if not self.position and not self.orders:
            if crossover(self.a, self.b):
                self.buy(size=0.5, limit=close * 0.998, sl=close * 0.98, tp=close * 1.03, tag="long")
            elif crossover(self.b, self.a):
                self.sell(size=0.5, stop=close * 0.998, sl=close * 1.02, tp=close * 0.97)
        if len(self.data) % 40 == 0:
            self.buy(size=3, stop=close * 1.004, limit=close * 1.006, sl=close * 0.99)
        for order in self.orders:
            if not order.is_contingent and len(self.data) % 50 == 0:
                order.cancel()
"""

TRAILING = HEADER + """
class S(TrailingStrategy):
    def init(self):
        super().init()
        self.set_trailing_sl(2)
        self.a = self.I(talib.EMA, self.data.Close, 12)
        self.b = self.I(talib.EMA, self.data.Close, 26)

    def next(self):
        super().next()
        if crossover(self.a, self.b):
            self.buy(size=0.5, tp=self.data.Close[-1] * 1.05)
        elif crossover(self.b, self.a):
            self.sell(size=0.5)
"""

MANUAL_TRAILING = HEADER + """
class S(Strategy):
    def init(self):
        self.a = self.I(talib.SMA, self.data.Close, 20)

    def next(self):
        close = self.data.Close[-1]
        for trade in self.trades:
            if trade.is_long:
                trade.sl = max(trade.sl or 0, close * 0.97)
            else:
                trade.tp = None if len(self.data) % 3 else close * 0.95
        if crossover(self.data.Close, self.a):
            self.buy(size=0.3, sl=close * 0.95)
        elif crossover(self.a, self.data.Close):
            self.sell(size=0.3, sl=close * 1.05)
"""

PARTIAL_CLOSE = HEADER + """
class S(Strategy):
    def init(self):
        self.a = self.I(talib.SMA, self.data.Close, 15)

    def next(self):
        n = len(self.data)
        if crossover(self.data.Close, self.a):
            self.buy(size=7)
        if n % 9 == 0 and self.trades:
            self.trades[0].close(0.5)
        if n % 23 == 0:
            self.position.close(0.3)
        if n % 61 == 0:
            self.position.close()
"""

# Several trades at once: position size, P/L and equity are read every bar and logged.
PYRAMID_LOG = HEADER + """
class S(Strategy):
    def init(self):
        self.a = self.I(talib.SMA, self.data.Close, 10)
        self.log = []

    def next(self):
        n = len(self.data)
        if n % 11 == 0 and len(self.trades) < 4:
            self.buy(size=2)
        if n % 17 == 0 and len(self.trades) < 4:
            self.sell(size=1)
        if n % 37 == 0:
            self.position.close()
        p = self.position
        self.log.append((self.equity, p.size, p.pl, p.pl_pct, bool(p), p.is_long, p.is_short,
                         [(t.pl, t.pl_pct, t.value) for t in self.trades]))
"""

ALWAYS_IN = HEADER + """
class S(Strategy):
    def init(self):
        self.a = self.I(talib.SMA, self.data.Close, 8)
        self.b = self.I(talib.SMA, self.data.Close, 21)

    def next(self):
        if crossover(self.a, self.b):
            self.buy()
        elif crossover(self.b, self.a):
            self.sell()
"""

HEDGED = HEADER + """
class S(Strategy):
    def init(self):
        self.a = self.I(talib.SMA, self.data.Close, 8)

    def next(self):
        n = len(self.data)
        if crossover(self.data.Close, self.a):
            self.buy(size=0.2)
        elif crossover(self.a, self.data.Close):
            self.sell(size=0.2)
        if n % 97 == 0:
            for trade in self.trades[:2]:
                trade.close()
"""

# 50:1 leverage, all in: equity goes below zero and the backtest stops early (_OutOfMoneyError).
OUT_OF_MONEY = HEADER + """
class S(Strategy):
    def init(self):
        self.a = self.I(talib.SMA, self.data.Close, 5)

    def next(self):
        n = len(self.data)
        if n % 100 == 0:
            self.position.close()
        elif not self.position:
            (self.buy if n % 200 < 100 else self.sell)()
"""

TWO_D = HEADER + """
class S(Strategy):
    def init(self):
        self.bb = self.I(talib.BBANDS, self.data.Close, 20, 2, 2)
        self.mix = self.I(lambda c: np.vstack([talib.SMA(c, 5), talib.SMA(c, 15)]), self.data.Close)
        self.log = []

    def next(self):
        upper, middle, lower = self.bb
        self.log.append((crossover(self.data.Close, lower), crossover(upper, self.data.Close),
                         crossover(self.mix[0], self.mix[1]), float(middle[-1]), self.bb.shape))
        if crossover(self.data.Close, lower):
            self.buy(size=0.5)
        elif crossover(self.data.Close, upper):
            self.position.close()
"""

# crossover() on 2-D arrays compares whole rows: `and` on a 2-D _Indicator's row takes its __bool__
# (the last value), on a plain array's row it raises ValueError (at bar 300, in both).
TWO_D_CROSSOVER_RAISES = HEADER + """
class S(Strategy):
    def init(self):
        self.bb = self.I(talib.BBANDS, self.data.Close, 20, 2, 2)
        self.log = []

    def next(self):
        self.log.append((crossover(self.bb, self.bb[::-1]), crossover(self.bb[::-1], self.bb)))
        if self.log[-1][0]:
            self.buy()
        if len(self.data) == 300:
            crossover(np.asarray(self.bb), np.asarray(self.bb)[::-1])
"""

PANDAS_INDICATORS = HEADER + """
class S(Strategy):
    def init(self):
        self.s = self.I(lambda c: pd.Series(c).rolling(10).mean(), self.data.Close, name="s")
        self.d = self.I(lambda df: df[["Close", "Open"]].rolling(30).mean(), self.data.df, name=("dc", "do"))
        self.log = []

    def next(self):
        self.log.append((crossover(self.s, self.d[0]), crossover(self.d[1], self.s)))
        if crossover(self.s, self.d[0]):
            self.buy(size=0.4)
        elif crossover(self.d[0], self.s):
            self.position.close()
"""

SIGNALS = HEADER + """
class S(SignalStrategy):
    def init(self):
        super().init()
        a = self.I(talib.SMA, self.data.Close, 10)
        b = self.I(talib.SMA, self.data.Close, 30)
        signal = (pd.Series(a) > pd.Series(b)).astype(int).diff().fillna(0)
        self.set_signal(entry_size=signal * 0.5)
"""

RAISES_IN_NEXT = HEADER + """
class S(Strategy):
    def init(self):
        self.a = self.I(talib.SMA, self.data.Close, 10)

    def next(self):
        if crossover(self.data.Close, self.a):
            self.buy(size=0.5)
        if len(self.data) == 400:
            1 / 0
"""

BAD_SIZE = (EXAMPLES / "needs_fixes.py").read_text()  # buy(size=1.5): AssertionError on the first cross

# Deleting a column in init(): with no order queued, the original still reads Open every bar and fails.
DELETES_OPEN = HEADER + """
class S(Strategy):
    def init(self):
        del self.data.df["Open"]

    def next(self):
        pass
"""

HUGE_ORDERS = HEADER + """
class S(Strategy):
    def init(self):
        self.a = self.I(talib.SMA, self.data.Close, 10)

    def next(self):
        if crossover(self.data.Close, self.a):
            self.buy(size=10**9)
        elif crossover(self.a, self.data.Close):
            self.buy(size=0.999, sl=self.data.Close[-1] * 0.9)
"""

# Stop entries whose SL/TP sits inside the entry bar: the "contingent SL/TP ... same bar" warning.
SAME_BAR_CONTINGENT = HEADER + """
class S(Strategy):
    def init(self):
        self.a = self.I(talib.SMA, self.data.Close, 10)

    def next(self):
        close = self.data.Close[-1]
        if not self.orders and not self.position:
            self.buy(size=0.3, stop=close * 1.001, sl=close * 0.999, tp=close * 1.02)
"""

RESAMPLED = HEADER + """
class S(Strategy):
    def init(self):
        self.daily = resample_apply("D", talib.SMA, self.data.Close, 5)
        self.a = self.I(talib.SMA, self.data.Close, 20)

    def next(self):
        if crossover(self.a, self.daily) and barssince(self.a < self.daily) >= 1:
            self.buy(size=0.3)
        elif crossover(self.daily, self.a):
            self.position.close()
"""


def commission_func(size: float, price: float) -> float:
    return 1.0 + abs(size) * price * 0.0005


CASES: dict[str, tuple[str, Callable[[], pd.DataFrame], dict[str, Any]]] = {
    "sma_cross_btc15m": (SMA_CROSS, btc_15m, {"cash": 1_000_000, "commission": 0.002, "finalize_trades": True}),
    "sma_cross_params": (SMA_CROSS, lambda: GOOG, {"cash": 10_000, "run_kwargs": {"fast": 5, "slow": 12}}),
    "crossover_inputs": (CROSSOVER_INPUTS, lambda: GOOG, {"cash": 100_000, "commission": 0.001}),
    "limit_stop_sl_tp": (ORDERS, btc_15m_head, {"cash": 1_000_000, "commission": 0.002, "finalize_trades": True}),
    "trailing_strategy": (TRAILING, lambda: EURUSD, {"cash": 100_000, "spread": 0.0002, "finalize_trades": True}),
    "manual_trailing_sl_tp": (MANUAL_TRAILING, lambda: GOOG, {"cash": 100_000, "commission": 0.001}),
    "partial_close": (PARTIAL_CLOSE, lambda: GOOG, {"cash": 100_000, "finalize_trades": True}),
    "pyramid_log": (PYRAMID_LOG, lambda: GOOG, {"cash": 100_000, "commission": 0.001, "finalize_trades": True}),
    "hedging": (HEDGED, lambda: GOOG, {"cash": 100_000, "hedging": True, "finalize_trades": True}),
    "exclusive_orders": (ALWAYS_IN, lambda: GOOG, {"cash": 100_000, "exclusive_orders": True}),
    "trade_on_close": (ALWAYS_IN, lambda: EURUSD, {"cash": 100_000, "trade_on_close": True, "finalize_trades": True}),
    "margin_leverage": (HEDGED, lambda: EURUSD, {"cash": 10_000, "margin": 0.05, "finalize_trades": True}),
    "spread": (ALWAYS_IN, lambda: GOOG, {"cash": 100_000, "spread": 0.001, "finalize_trades": True}),
    "commission_tuple": (PYRAMID_LOG, lambda: GOOG, {"cash": 100_000, "commission": (5.0, 0.001)}),
    "commission_callable": (ORDERS, btc_15m_head, {"cash": 1_000_000, "commission": commission_func}),
    "finalize_false_warns": (SMA_CROSS, lambda: GOOG, {"cash": 100_000}),
    "out_of_money": (OUT_OF_MONEY, btc_15m_head, {"cash": 1_000_000, "margin": 0.02}),
    "two_d_indicators": (TWO_D, lambda: GOOG, {"cash": 100_000, "finalize_trades": True}),
    "two_d_crossover_raises": (TWO_D_CROSSOVER_RAISES, lambda: GOOG, {"cash": 100_000}),
    "pandas_indicators": (PANDAS_INDICATORS, lambda: GOOG, {"cash": 100_000, "finalize_trades": True}),
    "signal_strategy": (SIGNALS, lambda: GOOG, {"cash": 100_000, "finalize_trades": True}),
    "raises_in_next": (RAISES_IN_NEXT, lambda: GOOG, {"cash": 100_000}),
    "needs_fixes_example": (BAD_SIZE, lambda: GOOG, {"cash": 100_000}),
    "deletes_open_column": (DELETES_OPEN, lambda: GOOG, {"cash": 100_000}),
    "insufficient_margin": (HUGE_ORDERS, lambda: GOOG, {"cash": 10_000, "commission": 0.002}),
    "same_bar_contingent": (SAME_BAR_CONTINGENT, btc_15m_head, {"cash": 1_000_000, "finalize_trades": True}),
    "resample_apply": (RESAMPLED, btc_15m_head, {"cash": 1_000_000, "commission": 0.001}),
    "btcusd_monthly": (ALWAYS_IN, lambda: BTCUSD, {"cash": 1_000_000, "finalize_trades": True}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_results(case: str) -> None:
    source, data, options = CASES[case]
    outcome = compare(source, data(), **options)
    # The cases exercise what their names say.
    messages = " | ".join(message for _, message in outcome.warnings)
    if case in ("two_d_crossover_raises",):
        assert outcome.error is not None and outcome.error[0] is ValueError
    elif case == "raises_in_next":
        assert outcome.error is not None and outcome.error[0] is ZeroDivisionError
    elif case == "needs_fixes_example":
        assert outcome.error is not None and outcome.error[0] is AssertionError
    elif case == "deletes_open_column":
        assert outcome.error == (KeyError, "'Open'")
    else:
        assert outcome.error is None, outcome.error
        assert outcome.stats is not None
        if case != "signal_strategy":
            assert outcome.stats["# Trades"] > 0 or case == "insufficient_margin"
    if case == "finalize_false_warns":
        assert "Some trades remain open" in messages
    if case == "insufficient_margin":
        assert "insufficient margin" in messages
    if case == "same_bar_contingent":
        assert "contingent SL/TP order would execute in the same bar" in messages
    if case == "out_of_money":
        assert outcome.stats is not None and outcome.stats["Equity Final [$]"] == 0


def _class_sources() -> dict[str, str]:
    """The class strategies under examples/strategies, importable without the script around them."""
    sources: dict[str, str] = {}
    for path in sorted(EXAMPLES.glob("*.py")):
        tree = ast.parse(path.read_text())
        # Keep imports and definitions: a script's own data loading and run need files we lack.
        tree.body = [node for node in tree.body
                     if isinstance(node, ast.Import | ast.ImportFrom | ast.ClassDef | ast.FunctionDef)]
        if any(isinstance(node, ast.ClassDef) for node in tree.body):
            sources[path.stem] = ast.unparse(tree)
    return sources


@pytest.mark.parametrize("example", sorted(_class_sources()))
def test_example_strategies(example: str) -> None:
    source = _class_sources()[example]
    compare(source, btc_15m(), cash=1_000_000, commission=0.002, finalize_trades=True)


def _backtesting_test_smacross() -> str:
    from backtesting.test._test import SmaCross

    return ("from backtesting import Strategy\nfrom backtesting.lib import crossover\n"
            "from backtesting.test import SMA\n" + textwrap.dedent(inspect.getsource(SmaCross)))


@pytest.mark.parametrize("name", ["GOOG", "EURUSD", "BTCUSD"])
def test_backtesting_test_smacross(name: str) -> None:
    data = {"GOOG": GOOG, "EURUSD": EURUSD, "BTCUSD": BTCUSD}[name]
    compare(_backtesting_test_smacross(), data, cash=1_000_000, commission=0.002)
    compare(_backtesting_test_smacross(), data, cash=10_000, commission=0.002, exclusive_orders=True,
            finalize_trades=True)


def test_backtesting_test_smacross_class_as_imported() -> None:
    from backtesting.test._test import SmaCross  # bound the original crossover when first imported

    outcomes = []
    for on in (False, True):
        (speedups.install if on else speedups.uninstall)()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stats = Backtest(GOOG, SmaCross, cash=10_000, commission=0.002).run()
        outcomes.append(Outcome(stats, None, [(w.category, str(w.message)) for w in caught], None))
    assert_same(*outcomes)


def test_fractional_backtest() -> None:
    compare(SMA_CROSS, BTCUSD, backtest=FractionalBacktest, cash=10_000, commission=0.001,
            fractional_unit=1e-6, finalize_trades=True)


def test_optimize_heatmap_identical() -> None:
    results = []
    for on in (False, True):
        (speedups.install if on else speedups.uninstall)()
        strategy = load_strategy(SMA_CROSS, f"optimize_{on}")
        # Backtest.optimize pickles the strategy class by reference for its worker processes.
        sys.modules[strategy.__module__] = types.ModuleType(strategy.__module__)
        sys.modules[strategy.__module__].S = strategy  # type: ignore[attr-defined]
        try:
            bt = Backtest(GOOG, strategy, cash=10_000, commission=0.002)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                best, heatmap = bt.optimize(fast=[5, 10, 15], slow=[20, 30], return_heatmap=True,
                                            constraint=lambda p: p.fast < p.slow)
        finally:
            del sys.modules[strategy.__module__]
        results.append((best, heatmap))
    (best_off, heat_off), (best_on, heat_on) = results
    pd.testing.assert_series_equal(heat_off, heat_on, check_exact=True)
    assert str(best_off._strategy) == str(best_on._strategy)
    same_frame(best_off._trades, best_on._trades, "_trades")


# --------------------------------------------------------------------------- the pieces themselves


CROSSOVER_ARGUMENTS: list[Any] = [
    np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0]), np.array([2.0, 2.0]), np.array([1.0]), np.array([]),
    np.array([np.nan, 1.0, 5.0]), np.array([1, 5]), np.array([True, False]), np.array([[1.0, 2.0], [2.0, 1.0]]),
    np.array(["a", "b"]), np.array([1.0, None, 3.0], dtype=object), np.float32([1, 2]),
    bt_util._Array(np.array([1.0, 4.0]), name="x"), bt_util._Indicator(np.array([4.0, 1.0]), name="y"),
    bt_util._Indicator(np.array([[1.0, 2.0], [3.0, 0.0]]), name="z"), bt_util._Indicator(np.array([2.5]), name="w"),
    2.0, 2, np.float64(2.5), np.int64(3), True, [1.0, 3.0], (3.0, 1.0), [5], pd.Series([1.0, 3.0]),
    pd.Series([], dtype=float), "ab", None,
]


def _call(func: Callable[[Any, Any], Any], a: Any, b: Any) -> tuple[str, Any]:
    try:
        return "ok", repr(func(a, b))
    except Exception as exc:
        return "raised", (type(exc), str(exc))


def test_crossover_matches_original_on_every_pair() -> None:
    original = bt_lib.crossover
    speedups.install()
    fast = bt_lib.crossover
    assert fast is not original
    with np.errstate(invalid="ignore"):
        for a in CROSSOVER_ARGUMENTS:
            for b in CROSSOVER_ARGUMENTS:
                with warnings.catch_warnings(record=True) as w_off:
                    warnings.simplefilter("always")
                    expected = _call(original, a, b)
                with warnings.catch_warnings(record=True) as w_on:
                    warnings.simplefilter("always")
                    got = _call(fast, a, b)
                assert got == expected, (a, b)
                assert [(w.category, str(w.message)) for w in w_on] == [(w.category, str(w.message)) for w in w_off]


def test_crossover_fast_path_checks_number_registrations() -> None:
    # Number.register(np.ndarray) makes the original treat arrays as scalars; it cannot be undone,
    # so it happens in a child interpreter.
    script = textwrap.dedent("""
        import numbers, numpy as np
        import backtesting.lib as lib
        from rbi.compat import backtesting_speedups as speedups
        original = lib.crossover
        speedups.install()
        def call(func, *args):
            try:
                return repr(func(*args))
            except Exception as exc:
                return repr(exc)
        a, b = np.array([1.0, 3.0]), np.array([2.0, 2.0])
        assert call(lib.crossover, a, b) == call(original, a, b) == "np.True_"
        numbers.Number.register(np.ndarray)
        assert isinstance(a, numbers.Number)
        # The original now pairs each array with itself, and `and` on an array raises.
        assert call(lib.crossover, a, b) == call(original, a, b), (call(lib.crossover, a, b), call(original, a, b))
        assert "ValueError" in call(original, a, b)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=REPO, env={"PYTHONPATH": str(REPO / "operator"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def _patched_attributes() -> dict[tuple[Any, str], Any]:
    return {
        (bt_core._Broker, "_process_orders"): vars(bt_core._Broker)["_process_orders"],
        (bt_core._Broker, "_position_size"): vars(bt_core._Broker)["_position_size"],
        (bt_core._Broker, "_position_initial_value"): vars(bt_core._Broker)["_position_initial_value"],
        (bt_core._Broker, "_position_unrealized_pl"): vars(bt_core._Broker)["_position_unrealized_pl"],
        (bt_lib, "crossover"): vars(bt_lib)["crossover"],
    }


def test_install_is_idempotent_and_uninstall_restores_the_originals() -> None:
    originals = _patched_attributes()
    assert not speedups.installed()
    speedups.install()
    assert speedups.installed()
    first = _patched_attributes()
    for key, value in first.items():
        assert value is not originals[key], key
    speedups.install()
    assert _patched_attributes() == first and all(first[k] is v for k, v in _patched_attributes().items())
    speedups.uninstall()
    assert not speedups.installed()
    for key, value in _patched_attributes().items():
        assert value is originals[key], key
    speedups.uninstall()
    for key, value in _patched_attributes().items():
        assert value is originals[key], key
    speedups.install()
    for key, value in _patched_attributes().items():  # a second install builds equivalent replacements
        assert value is not originals[key], key


def test_replacements_keep_the_originals_interface() -> None:
    speedups.install()
    broker = bt_core._Broker
    for name in ("_position_size", "_position_initial_value", "_position_unrealized_pl"):
        descriptor = vars(broker)[name]
        assert isinstance(descriptor, functools.cached_property)
        assert getattr(broker, name) is descriptor  # class access returns the descriptor
        assert descriptor.func.__name__ == name  # what _Broker._trades_cache_clear pops by
        assert descriptor.attrname == name
    assert bt_lib.crossover.__name__ == "crossover"
    assert bt_lib.crossover.__doc__ == bt_lib.__dict__["crossover"].__wrapped__.__doc__
    assert inspect.signature(bt_lib.crossover) == inspect.signature(bt_lib.crossover.__wrapped__)
    assert backtesting.lib.cross(np.array([1.0, 3.0]), np.array([2.0, 2.0])) is np.True_


def test_cached_values_are_cleared_as_before() -> None:
    # After a trade opens, position size and P/L are recomputed: _trades_cache_clear still works.
    speedups.install()
    strategy = load_strategy(PYRAMID_LOG, "cache_clear")
    stats = Backtest(GOOG.iloc[:300], strategy, cash=100_000).run()
    log = stats._strategy.log
    assert any(entry[1] != 0 for entry in log) and any(entry[1] == 0 for entry in log)
    speedups.uninstall()
    off = Backtest(GOOG.iloc[:300], load_strategy(PYRAMID_LOG, "cache_clear_off"), cash=100_000).run()
    assert repr(off._strategy.log) == repr(log)
