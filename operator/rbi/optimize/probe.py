"""The look-ahead check's altered data: numpy and pandas only, so the runner can build it in the sandbox.

rbi.optimize.guards re-exports these; see `lookahead_probe` for how the check works.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["LookaheadProbe", "lookahead_probe", "probe_decision_row"]


@dataclass(frozen=True, slots=True, eq=False)
class LookaheadProbe:
    """Data for the second run of the look-ahead check, and the cut to compare at."""

    data: pd.DataFrame  # the input's first rows, with the future after `decision_row` mirrored
    decision_row: int  # the bar whose decision is put to the test; rows after it differ from the input
    cut_time: Any  # pass to lookahead_suspected; same form as rbi.stats.trades_summary times


def _as_trade_time(value: Any) -> Any:
    # The form rbi.stats.trades_summary gives times: ISO strings for timestamps, ints for bar numbers.
    if isinstance(value, pd.Timestamp | np.datetime64):
        return pd.Timestamp(value).isoformat()
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _targeted_row(start: int, last: int, full_trades: Sequence[Mapping[str, Any]] | None) -> int:
    """The first decision row >= start on which the strategy holds a position, else `start`.

    Holding a position means the decision that reads the mirrored future
    chooses between keeping the trade and closing it on the next bar; either
    way a leak changes a trade that completes before the cut. (Entering on
    the next bar would only show in a trade completed after it.) Honest
    strategies are unaffected by the choice.
    """
    best: int | None = None
    for trade in full_trades or ():
        entry, exit_ = trade.get("entry_bar"), trade.get("exit_bar")
        if not (isinstance(entry, int) and isinstance(exit_, int)):
            continue
        # entry <= row - 1 and exit >= row + 1: in the position through the decision on `row`,
        # with next-open fills and with trade_on_close bookings alike.
        row = max(start, entry + 1)
        if row <= min(exit_ - 1, last) and (best is None or row < best):
            best = row
    return start if best is None else best


def probe_decision_row(n: int, *, keep: float = 0.7, full_trades: Sequence[Mapping[str, Any]] | None = None) -> int:
    """The decision row `lookahead_probe` tests for data of `n` rows (see there); pure, no data needed."""
    start = min(max(1, math.floor(keep * n)), n - 3)
    return _targeted_row(start, n - 3, full_trades)


def lookahead_probe(data: pd.DataFrame, *, keep: float = 0.7,
                    full_trades: Sequence[Mapping[str, Any]] | None = None,
                    trade_on_close: bool = False, horizon: int = 10,
                    decision_row: int | None = None) -> LookaheadProbe:
    """A copy of `data` whose future, seen from one decision bar ``d``, goes the other way.

    ``d`` is the row at `keep` of the way through, or, given the full run's
    trades (``entry_bar``/``exit_bar``, as from rbi.stats.trades_summary), the
    first row from there on which the strategy holds a position. Rows up to
    ``d`` are untouched. On row ``d + 1`` Open, High and Low stay (honest
    orders fill at them) and Close moves to the end of the bar's range on the
    other side of ``Close[d]`` from where it really closed (as far as the range
    reaches: a bar that gapped clean past ``Close[d]`` cannot reverse). The next `horizon`
    rows are mirrored in log price about ``Close[d]`` (``x -> Close[d]² / x``
    for O/H/L/C, High and Low swapped), so every later close lies on the other
    side of ``Close[d]`` too; Volume is mirrored about ``Volume[d]`` the same
    way. Everything after that is removed, which also changes any statistic
    of the whole series.

    An honest strategy decides on bar ``d`` from rows ``<= d`` and fills on
    bar ``d + 1`` at its Open/High/Low, so every trade completed before the
    returned cut is identical in both runs. A strategy that reads ``Close``
    (or Volume) 1 to ``horizon + 1`` bars ahead sees the future reversed on
    bar ``d``; further ahead it sees NaN. The cut is bar ``d + 2`` (``d + 1``
    with `trade_on_close`, which books a fill on the bar the decision was
    taken), which also leaves out the last bar, where ``finalize_trades``
    closes what is open.

    Run the strategy on `data` and on ``probe.data`` with the same parameters
    and backtest options, then call ``lookahead_suspected(full, probe_run,
    probe.cut_time)``. Known false-positive edge: a fractional-size order
    filled on bar ``d + 1`` while another trade is open is sized from equity
    valued at bar ``d + 1``'s close (backtesting.py's own accounting); it only
    counts if that trade also exits on bar ``d + 1``.
    """
    if not isinstance(data, pd.DataFrame) or "Close" not in data:
        raise ValueError("data must be an OHLC DataFrame with a Close column")
    n = len(data)
    if n < 4:
        raise ValueError(f"a look-ahead probe needs at least 4 rows, got {n}")
    if not 0 < keep < 1:
        raise ValueError(f"keep must be in (0, 1), got {keep!r}")
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
    # d + 2 must exist: the bar after the tested fill, where finalize_trades may close trades.
    d = probe_decision_row(n, keep=keep, full_trades=full_trades) if decision_row is None else decision_row
    if not 1 <= d <= n - 3:
        raise ValueError(f"decision_row must be in [1, {n - 3}], got {d}")
    end = min(n, d + 2 + horizon)
    probe = data.iloc[:end].copy()
    columns = {c: probe[c].to_numpy(dtype=np.float64, copy=True)
               for c in ("Open", "High", "Low", "Close", "Volume") if c in probe.columns}
    close = columns["Close"]
    pivot = close[d]
    after = slice(d + 2, end)
    if pivot > 0 and np.all(close[after] > 0):
        for name, source in (("Open", "Open"), ("Close", "Close"), ("High", "Low"), ("Low", "High")):
            if name in columns and source in columns:
                columns[name][after] = pivot * pivot / data[source].to_numpy(dtype=np.float64)[after]
    if "High" in columns and "Low" in columns:
        true_close = float(data["Close"].iat[d + 1])
        close[d + 1] = columns["Low"][d + 1] if true_close > pivot else columns["High"][d + 1]
    if "Volume" in columns:
        volume = columns["Volume"]
        base, ahead = volume[d], volume[d + 1:end]
        # The geometric mirror flips "more/less volume than on bar d" and stays positive.
        if base > 0 and np.all(ahead > 0):
            volume[d + 1:end] = base * base / ahead
    for name, values in columns.items():
        probe[name] = values
    cut_row = d + 1 if trade_on_close else d + 2
    return LookaheadProbe(data=probe, decision_row=d, cut_time=_as_trade_time(data.index[cut_row]))
