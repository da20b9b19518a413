"""Redo a run's accounting on the host, exactly as backtesting 0.6.6's broker does it.

From the checked trades and the served bars: the cash (minus the entry commission when a trade
opens; plus size × (exit − entry) minus the exit commission when it closes), the equity at each
broker step (cash plus the open trades marked to that bar's close), zero from the first step
where it is ≤ 0; then the trades DataFrame and the host's own `backtesting._stats.compute_stats`.

When an event happens matters, not only on which bar it is booked: with `trade_on_close` a
market order placed on bar i fills at bar i's close, is booked on bar i, but is processed in
the broker step of bar i + 1 (after bar i's equity was recorded).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from rbi.integrity.facts import Facts, IntegrityError, Options, TradeFact
from rbi.integrity.fills import Bars


def _broken(message: str) -> IntegrityError:
    return IntegrityError(message, detail="accounting")


@dataclass(frozen=True, slots=True)
class Recomputed:
    stats: pd.Series  # what Backtest.run() would have returned (with _equity_curve and _trades)
    equity: np.ndarray


def _entry_step(trade: TradeFact, bars: Bars, options: Options) -> int:
    if options.trade_on_close and trade.entry_bar + 1 < len(bars):
        market = bars.close[trade.entry_bar] * (1 + math.copysign(options.spread, trade.size))
        if trade.entry_price == market:
            return trade.entry_bar + 1
    return trade.entry_bar


def _exit_step(trade: TradeFact, bars: Bars, options: Options) -> int:
    assert trade.exit_bar is not None
    if (options.trade_on_close and trade.exit_bar + 1 < len(bars)
            and trade.exit_price == bars.close[trade.exit_bar] and trade.exit_price not in (trade.sl, trade.tp)):
        return trade.exit_bar + 1
    return trade.exit_bar


def _openings(trades: tuple[TradeFact, ...]) -> tuple[dict[int, float], dict[int, int]]:
    """(first piece → the size the trade was opened with, every piece → its first piece).

    `position.close(0.5)` splits a trade into pieces that share its entry bar, price and tag;
    backtesting charged the entry commission once, on the whole size, when it opened.
    """
    groups: dict[tuple[Any, ...], list[int]] = {}
    for number, trade in enumerate(trades):
        key = (trade.entry_bar, trade.entry_price, trade.size > 0, repr(trade.tag))
        groups.setdefault(key, []).append(number)
    first = {number: numbers[0] for numbers in groups.values() for number in numbers}
    return {numbers[0]: sum(trades[k].size for k in numbers) for numbers in groups.values()}, first


def equity_curve(facts: Facts, bars: Bars) -> np.ndarray:
    """The equity backtesting's broker records at each bar (its `_equity`, back-filled)."""
    options, trades, n = facts.options, facts.trades, len(bars)
    start = 1 + facts.warmup_bars
    equity = np.full(n, options.cash, dtype=float)
    if start >= n:
        if trades:
            raise _broken("the run reports trades, but the indicators' warm-up leaves no bar to trade on")
        return equity
    entry = [_entry_step(t, bars, options) for t in trades]
    exit_ = [_exit_step(t, bars, options) if t.exit_bar is not None else None for t in trades]
    opening, group = _openings(trades)
    # Cash events in broker order: (step, phase, trade, delta). Exits of older trades, then entries,
    # then exits of trades opened in the same step (a stop-loss hit on the entry bar).
    events: list[tuple[int, int, int, float]] = []
    for number, trade in enumerate(trades):
        if number in opening:
            events.append((entry[number], 1, number, -options.commission(opening[number], trade.entry_price)))
        step = exit_[number]
        if step is not None and trade.exit_price is not None:
            if step < entry[number]:
                raise _broken(f"trade {number}: exits before it entered")
            pnl = trade.size * (trade.exit_price - trade.entry_price) - options.commission(trade.size, trade.exit_price)
            events.append((step, 2 if step == entry[number] else 0, number, pnl))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    enter_at: dict[int, list[int]] = {}
    leave_at: dict[int, list[int]] = {}
    for number in range(len(trades)):
        enter_at.setdefault(entry[number], []).append(number)
        step = exit_[number]
        if step is not None:
            leave_at.setdefault(step, []).append(number)
    boundaries = sorted({start, *entry, *(s for s in exit_ if s is not None)})
    if boundaries[0] < start:
        first = min(range(len(trades)), key=lambda k: entry[k])
        raise _broken(f"trade {first}: filled before the first broker step (bar {start})")
    cash = options.cash
    # The open trades in the order the broker lists them (the order they opened in).
    position: dict[int, TradeFact] = {}
    cursor = 0
    for k, step in enumerate(boundaries):
        while cursor < len(events) and events[cursor][0] == step:
            cash += events[cursor][3]
            cursor += 1
        for number in enter_at.get(step, ()):
            if exit_[number] != step:
                position[number] = trades[number]
        for number in leave_at.get(step, ()):
            position.pop(number, None)
        end = boundaries[k + 1] if k + 1 < len(boundaries) else n
        segment = slice(step, end)
        if position:
            # The broker holds one Trade per opening; its pieces still open are that trade's size.
            held: dict[int, float] = {}
            for number, trade in position.items():
                held[group[number]] = held.get(group[number], 0.0) + trade.size
            size = sum(int(held_size) for held_size in held.values())
            cost = sum(held_size * trades[first].entry_price for first, held_size in held.items())
            equity[segment] = cash + (bars.close[segment] * size - cost)
        else:
            equity[segment] = cash
    _zero_after_bust(equity, facts, bars, start, entry, exit_)
    equity[:start] = equity[start]
    return equity


def _zero_after_bust(equity: np.ndarray, facts: Facts, bars: Bars, start: int, entry: list[int],
                     exit_: list[int | None]) -> None:
    """backtesting stops the run at the first step whose equity is ≤ 0 and closes all at that close."""
    busted = np.nonzero(equity[start:] <= 0)[0]
    if not len(busted):
        return
    step = start + int(busted[0])
    equity[step:] = 0
    for number, trade in enumerate(facts.trades):
        late_exit = exit_[number] is not None and exit_[number] > step and not (  # type: ignore[operator]
            trade.exit_bar == step and trade.exit_price == bars.close[step])
        if entry[number] > step or late_exit or trade.is_open:
            raise _broken(f"trade {number}: trades on after the account went bust on {bars.when(step)}")


def trades_frame(facts: Facts, bars: Bars) -> pd.DataFrame:
    """stats._trades as compute_stats builds it from Trade objects, from the closed trades.

    Each value is computed with backtesting's own expression (Trade.pl, Trade.pl_pct,
    _Broker._close_trade's commissions), one trade at a time, so the floats are the same.
    """
    options = facts.options
    closed = [t for t in facts.trades if t.exit_bar is not None and t.exit_price is not None]
    exits = [float(t.exit_price) for t in closed if t.exit_price is not None]
    commissions = [options.commission(t.size, x) + options.commission(t.size, t.entry_price)
                   for t, x in zip(closed, exits, strict=True)]
    index = bars.frame.index
    entry_bars = np.array([t.entry_bar for t in closed], dtype=np.int64)
    exit_bars = np.array([t.exit_bar for t in closed], dtype=np.int64)
    frame = pd.DataFrame({
        "Size": [t.size for t in closed],
        "EntryBar": entry_bars,
        "ExitBar": exit_bars,
        "EntryPrice": [t.entry_price for t in closed],
        "ExitPrice": exits,
        "SL": [t.sl for t in closed],
        "TP": [t.tp for t in closed],
        "PnL": [t.size * (x - t.entry_price) - c for t, x, c in zip(closed, exits, commissions, strict=True)],
        "Commission": commissions,
        "ReturnPct": [math.copysign(1, t.size) * (x / t.entry_price - 1) - c / (abs(t.size) * t.entry_price)
                      for t, x, c in zip(closed, exits, commissions, strict=True)],
        "EntryTime": index[entry_bars],
        "ExitTime": index[exit_bars],
    })
    frame["Duration"] = frame["ExitTime"] - frame["EntryTime"]
    frame["Tag"] = [t.tag for t in closed]
    return frame


def recompute(facts: Facts, bars: Bars) -> Recomputed:
    """Every statistic of the run, by the host's own backtesting, from the facts and the bars."""
    from backtesting._stats import compute_stats

    if facts.bars != len(bars):
        raise _broken(f"the run reports {facts.bars} bars, but the data it was served has {len(bars)}")
    equity = equity_curve(facts, bars)
    trades = trades_frame(facts, bars)
    # compute_stats divides by zero for flat equity (a Sortino ratio of a run that never traded): the run's
    # own report already carries its warnings; the host's recomputation must not print them into the CLI's output.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = compute_stats(trades=trades, equity=equity, ohlc_data=bars.frame, strategy_instance=None,
                              risk_free_rate=0.0)
    return Recomputed(stats=_as_backtesting_reports(stats, trades, facts, bars), equity=equity)


def _as_backtesting_reports(stats: pd.Series, trades: pd.DataFrame, facts: Facts, bars: Bars) -> pd.Series:
    """What compute_stats leaves out or cannot know when given a DataFrame instead of the run's objects.

    'Commissions [$]' (shown only when non-zero, after 'Equity Peak [$]'), and the buy-and-hold
    return from the first bar after the indicators' warm-up (and the alpha that depends on it).
    """
    values = dict(stats.items())
    warmup = facts.warmup_bars
    close = bars.close
    buy_hold = (close[-1] - close[warmup]) / close[warmup] * 100
    values["Buy & Hold Return [%]"] = buy_hold
    values["Alpha [%]"] = values["Return [%]"] - 0.0 * 100 - values["Beta"] * (buy_hold - 0.0 * 100)
    commissions = sum(trades["Commission"]) if len(trades) else 0
    ordered: dict[str, Any] = {}
    for label, value in values.items():
        ordered[label] = value
        if label == "Equity Peak [$]" and commissions:
            ordered["Commissions [$]"] = commissions
    return type(stats)(ordered, dtype=object)
