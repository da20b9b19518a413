"""Schema check of the untrusted facts a sandboxed run reports (rbi.integrity.collect makes them).

Everything is checked for type, range and size before any of it is used; the first thing
wrong is named. Pure: no data, no backtesting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_TRADES = 1_000_000
MAX_BARS = 50_000_000


class IntegrityError(Exception):
    """The run's facts are malformed, impossible for the data, or disagree with its report.

    `detail` says which: facts, fill, frame, accounting or disagreement (the RunError detail).
    """

    def __init__(self, message: str, *, detail: str = "facts") -> None:
        super().__init__(message)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Options:
    cash: float
    commission_fixed: float
    commission_relative: float
    spread: float
    margin: float
    trade_on_close: bool
    hedging: bool
    exclusive_orders: bool
    finalize_trades: bool

    def commission(self, size: float, price: float) -> float:
        # The same expression as backtesting's _Broker._commission_func, so the floats agree.
        return self.commission_fixed + abs(size) * price * self.commission_relative


@dataclass(frozen=True, slots=True)
class TradeFact:
    size: float
    entry_bar: int
    exit_bar: int | None
    entry_price: float
    exit_price: float | None
    sl: float | None
    tp: float | None
    tag: Any

    @property
    def is_open(self) -> bool:
        return self.exit_bar is None


@dataclass(frozen=True, slots=True)
class FrameFact:
    """The bars a script's own Backtest ran on (only when they are not the host's rows)."""

    datetime: bool
    tz: str | None
    index: np.ndarray  # int64: ns since the epoch (UTC when tz is set), or the integer index
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray


@dataclass(frozen=True, slots=True)
class Facts:
    bars: int
    warmup_bars: int
    options: Options
    trades: tuple[TradeFact, ...]
    equity_final: float | None
    frame: FrameFact | None


def _fail(message: str) -> IntegrityError:
    return IntegrityError(f"malformed facts: {message}")


def _finite(value: Any, name: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(f"{name} must be a finite number, got {str(value)[:40]!r}")
    return float(value)


def _integer(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(f"{name} must be an integer in [{low}, {high}], got {str(value)[:40]!r}")
    return value


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(f"backtest.{name} must be true or false")
    return value


def _options(raw: Any) -> Options:
    if not isinstance(raw, dict):
        raise _fail("backtest must be an object")
    commission = raw.get("commission")
    if commission == "callable":
        raise IntegrityError("the backtest charged commission with a function; its fees cannot be recomputed, "
                             "so the run cannot be verified (use a number or [fixed, relative])")
    if isinstance(commission, list) and len(commission) == 2:
        fixed = _finite(commission[0], "backtest.commission[0]")
        relative = _finite(commission[1], "backtest.commission[1]")
    else:
        fixed, relative = 0.0, _finite(commission, "backtest.commission")
    assert fixed is not None and relative is not None
    cash = _finite(raw.get("cash"), "backtest.cash")
    spread = _finite(raw.get("spread"), "backtest.spread")
    margin = _finite(raw.get("margin"), "backtest.margin")
    assert cash is not None and spread is not None and margin is not None
    # backtesting's own asserts: a run outside them could not have happened.
    if cash <= 0 or not 0 < margin <= 1 or fixed < 0 or not -0.1 <= relative < 0.1 or not -1 < spread < 1:
        raise _fail("backtest options are outside what backtesting.py accepts")
    return Options(cash=cash, commission_fixed=fixed, commission_relative=relative, spread=spread, margin=margin,
                   trade_on_close=_flag(raw.get("trade_on_close"), "trade_on_close"),
                   hedging=_flag(raw.get("hedging"), "hedging"),
                   exclusive_orders=_flag(raw.get("exclusive_orders"), "exclusive_orders"),
                   finalize_trades=_flag(raw.get("finalize_trades"), "finalize_trades"))


def _trade(raw: Any, number: int, bars: int) -> TradeFact:
    name = f"trades[{number}]"
    if not isinstance(raw, dict):
        raise _fail(f"{name} must be an object")
    size = _finite(raw.get("size"), f"{name}.size")
    assert size is not None
    if size == 0 or size != round(size):
        raise _fail(f"{name}.size must be a whole, non-zero number of units, got {size}")
    entry_bar = _integer(raw.get("entry_bar"), f"{name}.entry_bar", 0, bars - 1)
    exit_raw = raw.get("exit_bar")
    exit_bar = None if exit_raw is None else _integer(exit_raw, f"{name}.exit_bar", entry_bar, bars - 1)
    entry_price = _finite(raw.get("entry_price"), f"{name}.entry_price")
    exit_price = _finite(raw.get("exit_price"), f"{name}.exit_price", optional=True)
    assert entry_price is not None
    if (exit_bar is None) != (exit_price is None):
        raise _fail(f"{name}: exit_bar and exit_price must both be set or both be null")
    if entry_price <= 0 or (exit_price is not None and exit_price <= 0):
        raise _fail(f"{name}: prices must be positive")
    tag = raw.get("tag")
    if not (tag is None or isinstance(tag, bool | int | float | str)):
        raise _fail(f"{name}.tag must be a plain value")
    return TradeFact(size=size, entry_bar=entry_bar, exit_bar=exit_bar, entry_price=entry_price,
                     exit_price=exit_price, sl=_finite(raw.get("sl"), f"{name}.sl", optional=True),
                     tp=_finite(raw.get("tp"), f"{name}.tp", optional=True),
                     tag=tag[:200] if isinstance(tag, str) else tag)


def _array(raw: Any, name: str, bars: int, *, integer: bool = False) -> np.ndarray:
    if not isinstance(raw, list) or len(raw) != bars:
        raise _fail(f"frame.{name} must be a list of {bars} numbers")
    try:
        array = np.asarray(raw, dtype=np.int64 if integer else np.float64)
    except (TypeError, ValueError, OverflowError):
        raise _fail(f"frame.{name} holds something that is not a number") from None
    if array.ndim != 1 or (not integer and not np.isfinite(array).all()):
        raise _fail(f"frame.{name} must hold finite numbers")
    return array


def _frame(raw: Any, bars: int) -> FrameFact | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _fail("frame must be an object or null")
    datetime = raw.get("datetime", True)
    tz = raw.get("tz")
    if not isinstance(datetime, bool) or not (tz is None or (isinstance(tz, str) and len(tz) < 64)):
        raise _fail("frame.datetime must be a boolean and frame.tz a zone name or null")
    index = _array(raw.get("index_ns"), "index_ns", bars, integer=True)
    if bars > 1 and not (np.diff(index) >= 0).all():
        raise _fail("frame.index_ns must be sorted")
    return FrameFact(datetime=datetime, tz=tz, index=index, open=_array(raw.get("open"), "open", bars),
                     high=_array(raw.get("high"), "high", bars), low=_array(raw.get("low"), "low", bars),
                     close=_array(raw.get("close"), "close", bars))


def parse_facts(raw: Any) -> Facts:
    """The facts, checked; raises IntegrityError naming the first thing wrong."""
    if not isinstance(raw, dict):
        raise IntegrityError("the run reported statistics without the facts to verify them")
    if raw.get("v") != 1:
        raise _fail(f"unknown version {str(raw.get('v'))[:20]!r}")
    bars = _integer(raw.get("bars"), "bars", 1, MAX_BARS)
    warmup = _integer(raw.get("warmup_bars"), "warmup_bars", 0, bars)
    trades_raw = raw.get("trades")
    if not isinstance(trades_raw, list) or len(trades_raw) > MAX_TRADES:
        raise _fail(f"trades must be a list of at most {MAX_TRADES}")
    trades = tuple(_trade(t, i, bars) for i, t in enumerate(trades_raw))
    return Facts(bars=bars, warmup_bars=warmup, options=_options(raw.get("backtest")), trades=trades,
                 equity_final=_finite(raw.get("equity_final"), "equity_final", optional=True),
                 frame=_frame(raw.get("frame"), bars))
