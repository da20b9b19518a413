"""The producing side: the raw facts of one backtest, built inside the sandbox.

What this returns is UNTRUSTED by construction (the strategy shares the process), so it
carries no conclusions, only what the host needs to redo the run's accounting itself:
the options, the trades as the broker recorded them, and the bars when they are not the
host's own dataset rows. Never raises: a run whose facts cannot be built reports none,
and the host fails it.
"""

from __future__ import annotations

import math
from typing import Any

FACTS_VERSION = 1
# Options the host needs; backtesting keeps all but finalize_trades in the broker's partial.
_BROKER_OPTIONS = ("cash", "commission", "spread", "margin", "trade_on_close", "hedging", "exclusive_orders")


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _tag(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value if not isinstance(value, float) or math.isfinite(value) else None
    return str(value)[:200]


def _options(backtest: Any) -> dict[str, Any]:
    keywords = dict(getattr(backtest._broker, "keywords", {}) or {})
    options: dict[str, Any] = {}
    for name in _BROKER_OPTIONS:
        value = keywords.get(name)
        if name == "commission":
            if isinstance(value, tuple | list):
                value = [_number(v) for v in value]
            elif callable(value):
                value = "callable"  # the host cannot redo a function's fees; it refuses the run
            else:
                value = _number(value)
        elif name in ("cash", "spread", "margin"):
            value = _number(value)
        else:
            value = bool(value)
        options[name] = value
    options["finalize_trades"] = bool(getattr(backtest, "_finalize_trades", False))
    return options


def _trade(trade: Any, *, still_open: bool) -> dict[str, Any]:
    return {
        "size": _number(trade.size),
        "entry_bar": int(trade.entry_bar),
        "exit_bar": None if still_open or trade.exit_bar is None else int(trade.exit_bar),
        "entry_price": _number(trade.entry_price),
        "exit_price": None if still_open else _number(trade.exit_price),
        "sl": _number(trade.sl) if trade.sl is not None else None,
        "tp": _number(trade.tp) if trade.tp is not None else None,
        "tag": _tag(trade.tag),
    }


def _frame(data: Any) -> dict[str, Any]:
    import pandas as pd

    index = data.index
    if isinstance(index, pd.DatetimeIndex):
        tz = str(index.tz) if index.tz is not None else None
        stamps = index.as_unit("ns").asi8.tolist()  # UTC for an aware index, wall time for a naive one
        datetime = True
    else:
        tz, datetime = None, False
        stamps = [int(v) for v in index.tolist()]
    return {
        "datetime": datetime, "tz": tz, "index_ns": stamps,
        **{key: data[column].to_numpy(dtype=float).tolist()
           for key, column in (("open", "Open"), ("high", "High"), ("low", "Low"), ("close", "Close"))},
    }


def same_rows(data: Any, served: Any) -> bool:
    """True when the Backtest ran on exactly the host's rows (then the bars need not travel)."""
    import numpy as np

    if served is None or len(data) != len(served):
        return False
    try:
        if not np.array_equal(data.index.as_unit("ns").asi8, served.index.as_unit("ns").asi8):
            return False
        return all(np.array_equal(data[c].to_numpy(dtype=float), served[c].to_numpy(dtype=float))
                   for c in ("Open", "High", "Low", "Close"))
    except (AttributeError, KeyError, TypeError, ValueError):
        return False


def run_facts(backtest: Any, stats: Any, *, served: Any = None, send_frame: bool = False) -> dict[str, Any] | None:
    """The facts of the run that produced `stats` on `backtest`; None when they cannot be read.

    `send_frame`: include the bars unless they are exactly `served` (the host's own rows).
    """
    try:
        from backtesting._util import _indicator_warmup_nbars

        strategy = stats["_strategy"]
        broker = strategy._broker
        data = backtest._data
        trades = [_trade(t, still_open=False) for t in broker.closed_trades]
        trades += [_trade(t, still_open=True) for t in broker.trades]
        return {
            "v": FACTS_VERSION,
            "bars": len(data),
            "warmup_bars": int(_indicator_warmup_nbars(strategy)),
            "backtest": _options(backtest),
            "trades": trades,
            "equity_final": _number(stats["Equity Final [$]"]),
            "frame": _frame(data) if send_frame and not same_rows(data, served) else None,
        }
    except Exception:  # a strategy that broke its own objects gets no facts, and fails on the host
        return None


class DeferredStatistics:
    """backtesting's compute_stats replaced, inside the sandbox, by what the facts need.

    The host recomputes every statistic from the facts anyway (rbi.integrity.recompute), so the
    sandbox computing them too only costs time: about a tenth of a trial. What stands in returns
    the strategy, its closed trades and the broker's final equity (Backtest.run passes compute_stats
    exactly the equity it reports as 'Equity Final [$]'), which is all run_facts, the diagnostics
    and the parameters read.

    A strategy that replaced compute_stats itself keeps its replacement: its figures are then
    reported and compared, so the forgery fails as what it is instead of being quietly undone.
    """

    def __init__(self) -> None:
        self.deferred = False
        self._previous: Any = None

    def __enter__(self) -> DeferredStatistics:
        import backtesting.backtesting as engine

        self._previous = engine.compute_stats
        if engine.compute_stats is _BACKTESTING_COMPUTE_STATS:
            engine.compute_stats = _facts_only_stats
            self.deferred = True
        return self

    def __exit__(self, *_exc: object) -> None:
        import backtesting.backtesting as engine

        engine.compute_stats = self._previous


def _facts_only_stats(*, trades: Any, equity: Any, ohlc_data: Any, strategy_instance: Any,
                      risk_free_rate: float = 0.0) -> Any:
    import pandas as pd

    del ohlc_data, risk_free_rate
    final = float(equity[-1]) if len(equity) else math.nan
    return pd.Series({"Equity Final [$]": final, "_strategy": strategy_instance, "_trades": list(trades)},
                     dtype=object)


def _original_compute_stats() -> Any:
    # Taken when this module is first imported: in the worker before any strategy code has run.
    from backtesting._stats import compute_stats

    return compute_stats


_BACKTESTING_COMPUTE_STATS = _original_compute_stats()
