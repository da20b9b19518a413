"""Every fill checked against the bars the host served, with backtesting 0.6.6's fill rules.

backtesting fills a market order at the bar's open (with `trade_on_close`, at the previous
bar's close, booked on that bar), a limit, stop, stop-loss or take-profit order at a price
inside the bar's low–high (or at its open when the market gapped through), and closes
everything at the close when the account goes bust. Entries carry the spread
(`price * (1 ± spread)`), exits never do. A fill at a price the bar never had is impossible.

Also here: the check that a script's own frame is made of the served data (identity, slices,
resamples), so its fills can be checked against it in turn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rbi.integrity.facts import Facts, FrameFact, IntegrityError, TradeFact

# A price "equals" a bar's price up to float noise, never more (prices are ~1e4, noise ~1e-12).
RELATIVE_SLACK = 1e-9


def _impossible(message: str) -> IntegrityError:
    return IntegrityError(message, detail="fill")


def _invented(message: str) -> IntegrityError:
    return IntegrityError(message, detail="frame")


@dataclass(frozen=True, slots=True)
class Bars:
    """The OHLC bars a run is judged on, as plain arrays, and the frame compute_stats needs."""

    frame: pd.DataFrame
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray

    @classmethod
    def of(cls, frame: pd.DataFrame) -> Bars:
        return cls(frame=frame, **{key: frame[column].to_numpy(dtype=float) for key, column in
                                   (("open", "Open"), ("high", "High"), ("low", "Low"), ("close", "Close"))})

    def __len__(self) -> int:
        return len(self.close)

    def when(self, bar: int) -> str:
        return str(self.frame.index[bar]) if 0 <= bar < len(self) else f"bar {bar}"


def _near(a: float, b: float) -> bool:
    return abs(a - b) <= RELATIVE_SLACK * max(abs(a), abs(b))


def _possible(price: float, bar: int, bars: Bars, *, trade_on_close: bool) -> bool:
    """Could backtesting have filled an order (before spread) at `price`, booked on `bar`?"""
    low, high = bars.low[bar], bars.high[bar]
    if low * (1 - RELATIVE_SLACK) <= price <= high * (1 + RELATIVE_SLACK):
        return True
    # Data whose open or close lies outside its own low–high still fills there.
    if _near(price, bars.open[bar]) or _near(price, bars.close[bar]):
        return True
    # trade_on_close: a stop order triggered on `bar` may fill at the previous close.
    return trade_on_close and bar > 0 and _near(price, bars.close[bar - 1])


def _describe(number: int, trade: TradeFact, side: str, price: float, bar: int, bars: Bars) -> str:
    return (f"trade {number} ({'long' if trade.size > 0 else 'short'} {abs(trade.size):g}): {side} at {price:.10g} "
            f"on {bars.when(bar)} is a price that bar never had (low {bars.low[bar]:.10g}, "
            f"high {bars.high[bar]:.10g})")


def check_fills(facts: Facts, bars: Bars) -> None:
    """Raise IntegrityError at the first fill that the data makes impossible."""
    options = facts.options
    start = 1 + facts.warmup_bars  # backtesting's first broker step
    earliest = start - 1 if options.trade_on_close else start
    for number, trade in enumerate(facts.trades):
        if trade.entry_bar < earliest:
            raise _impossible(f"trade {number}: entered on {bars.when(trade.entry_bar)}, before the first bar "
                                 f"the strategy could trade (bar {earliest}, after {facts.warmup_bars} bars of "
                                 "indicator warm-up)")
        raw_entry = trade.entry_price / (1 + math.copysign(options.spread, trade.size))
        if not _possible(raw_entry, trade.entry_bar, bars, trade_on_close=options.trade_on_close):
            raise _impossible(_describe(number, trade, "entry", trade.entry_price, trade.entry_bar, bars))
        if trade.exit_bar is not None and trade.exit_price is not None and not _possible(
                trade.exit_price, trade.exit_bar, bars, trade_on_close=options.trade_on_close):
            raise _impossible(_describe(number, trade, "exit", trade.exit_price, trade.exit_bar, bars))
        if trade.is_open and options.finalize_trades and trade.entry_bar < len(bars) - 2:
            raise _impossible(f"trade {number}: still open at the end although finalize_trades closes every "
                                 "trade")


def check_frame(frame: FrameFact, served: Bars) -> None:
    """A script's own bars must lie within the served data's range for their time spans."""
    if not frame.datetime:
        _check_rows(frame, served)
        return
    stamps = pd.DatetimeIndex(served.frame.index)
    served_ns = stamps.as_unit("ns").asi8
    index = frame.index
    n = len(index)
    ends = np.empty(n, dtype=np.int64)
    ends[:-1] = index[1:]
    ends[-1] = index[-1] + (index[-1] - index[-2]) if n > 1 else np.iinfo(np.int64).max
    lo = np.searchsorted(served_ns, index, side="left")
    hi = np.searchsorted(served_ns, ends, side="left")
    empty = np.nonzero(hi <= lo)[0]
    if len(empty):
        k = int(empty[0])
        raise _invented(f"the backtest's bar {k} ({pd.Timestamp(int(index[k]))}) has no served data in its "
                             "time span: the frame is not made of the dataset")
    # Spans are consecutive, so one reduceat per column gives every span's extremes.
    lows = np.minimum.reduceat(served.low, lo)
    highs = np.maximum.reduceat(served.high, lo)
    # reduceat runs to the next start; the last span must stop at its own end.
    lows[-1] = served.low[lo[-1]:hi[-1]].min()
    highs[-1] = served.high[lo[-1]:hi[-1]].max()
    floor, ceiling = lows * (1 - RELATIVE_SLACK), highs * (1 + RELATIVE_SLACK)
    for name in ("open", "high", "low", "close"):
        values = getattr(frame, name)
        bad = np.nonzero((values < floor) | (values > ceiling))[0]
        if len(bad):
            k = int(bad[0])
            raise _invented(f"the backtest's bar {k} ({pd.Timestamp(int(index[k]))}) has {name} "
                                 f"{values[k]:.10g}, outside what the served data had in that span "
                                 f"({lows[k]:.10g}–{highs[k]:.10g}): invented prices")


def _check_rows(frame: FrameFact, served: Bars) -> None:
    """Without a datetime index the bars must be a run of the served rows, value for value."""
    n = len(frame.close)
    columns = [(frame.open, served.open), (frame.high, served.high), (frame.low, served.low),
               (frame.close, served.close)]
    candidates = np.nonzero(np.logical_and.reduce([mine[0] == theirs for mine, theirs in columns]))[0]
    for start in candidates:
        if start + n <= len(served) and all(np.array_equal(mine, theirs[start:start + n]) for mine, theirs in columns):
            return
    raise _invented("the backtest ran on bars without a datetime index that are not a run of the served "
                         "rows: invented prices, or data the host did not serve")
