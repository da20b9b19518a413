"""backtesting.py statistics as plain, JSON-safe data.

Two sources feed this module. In class mode the runner holds the object that
`Backtest.run()` returns (a pandas Series of mixed types). In script mode the
only trace may be the text that the script printed with `print(stats)`. Both
are turned into the same flat dict with the same snake_case keys, so the store
and the reports never care which mode produced a run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import math
import re
import types
from collections.abc import Iterable, Mapping
from pathlib import PurePath
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "equity_curve",
    "json_safe",
    "parse_stats_text",
    "stat_key",
    "stats_to_dict",
    "strategy_params",
    "trades_summary",
]

# Every label that backtesting.py 0.6.x emits. Only used to recognise a printed
# stats block among other stdout noise; keys are derived by `stat_key`, so a
# label added by a later release still maps without touching this list.
KNOWN_LABELS: frozenset[str] = frozenset(
    {
        "Start",
        "End",
        "Duration",
        "Exposure Time [%]",
        "Equity Final [$]",
        "Equity Peak [$]",
        "Commissions [$]",
        "Return [%]",
        "Buy & Hold Return [%]",
        "Return (Ann.) [%]",
        "Volatility (Ann.) [%]",
        "CAGR [%]",
        "Sharpe Ratio",
        "Sortino Ratio",
        "Calmar Ratio",
        "Alpha [%]",
        "Beta",
        "Max. Drawdown [%]",
        "Avg. Drawdown [%]",
        "Max. Drawdown Duration",
        "Avg. Drawdown Duration",
        "# Trades",
        "Win Rate [%]",
        "Best Trade [%]",
        "Worst Trade [%]",
        "Avg. Trade [%]",
        "Max. Trade Duration",
        "Avg. Trade Duration",
        "Profit Factor",
        "Expectancy [%]",
        "SQN",
        "Kelly Criterion",
    }
)

SECONDS_SUFFIX = "_seconds"
BARS_SUFFIX = "_bars"


# --------------------------------------------------------------------------- keys


def stat_key(label: str) -> str:
    """Map a backtesting.py stat label onto a stable snake_case key.

    'Return (Ann.) [%]' -> 'return_ann_pct', '# Trades' -> 'num_trades',
    'Equity Final [$]' -> 'equity_final'.
    """
    text = label.replace("[%]", " pct ").replace("%", " pct ")
    # Dollar figures are in the account currency, which is not always dollars,
    # so the unit is dropped rather than spelled.
    text = text.replace("[$]", " ").replace("$", " ")
    text = text.replace("#", " num ").replace("&", " ").replace(".", "")
    text = re.sub(r"[^0-9A-Za-z]+", "_", text)
    return text.strip("_").lower()


def _is_duration_label(label: str) -> bool:
    return label == "Duration" or label.endswith(" Duration")


def _duration_key(label: str, *, datetime_index: bool) -> str:
    return stat_key(label) + (SECONDS_SUFFIX if datetime_index else BARS_SUFFIX)


# --------------------------------------------------------------------------- json


def _finite_or_none(value: float) -> float | None:
    if not math.isfinite(value):
        return None
    # -0.0 (backtesting's 'Max. Drawdown [%]' with no trades) reads as a bug in a table.
    return value + 0.0


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NaT or value is pd.NA:
        return True
    if isinstance(value, float | np.floating):
        return bool(np.isnan(value))
    if isinstance(value, np.datetime64 | np.timedelta64):
        return bool(np.isnat(value))
    return False


def json_safe(value: Any) -> Any:
    """Turn numpy, pandas and container values into plain JSON types.

    NaN and infinities become None, timestamps ISO 8601 strings, timedeltas
    float seconds. Anything unknown becomes its str() so that a result can
    always be serialised, even when a strategy returned something odd.
    """
    if _is_missing(value):
        return None
    if isinstance(value, bool | str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    # numpy's timedelta64 is an integer subtype, so it must be caught before ints.
    if isinstance(value, np.timedelta64):
        return _finite_or_none(pd.Timedelta(value).total_seconds())
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return _finite_or_none(float(value))
    if isinstance(value, decimal.Decimal):
        return _finite_or_none(float(value))
    if isinstance(value, enum.Enum):
        return json_safe(value.value)
    if isinstance(value, np.datetime64):
        return pd.Timestamp(value).isoformat()
    if isinstance(value, dt.datetime | dt.date | dt.time):
        # pd.Timestamp is a datetime subclass, so it lands here too.
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return _finite_or_none(value.total_seconds())
    if isinstance(value, pd.DataFrame):
        return [json_safe(row) for row in value.to_dict(orient="records")]
    if isinstance(value, pd.Series):
        return {str(json_safe(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, Mapping):
        return {str(json_safe(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, np.ndarray | pd.Index):
        return [json_safe(v) for v in value.tolist()]
    if isinstance(value, set | frozenset):
        items = [json_safe(v) for v in value]
        return sorted(items, key=repr)
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_safe(dataclasses.asdict(value))
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


# --------------------------------------------------------------------------- run object


def _get(stats: Any, key: str) -> Any:
    """Item access that works for the stats Series and for a plain mapping."""
    try:
        return stats[key]
    except (KeyError, IndexError, TypeError):
        return None


def _has_datetime_index(stats: Any) -> bool:
    start = _get(stats, "Start")
    if isinstance(start, dt.datetime | np.datetime64):
        return True
    curve = _get(stats, "_equity_curve")
    return isinstance(curve, pd.DataFrame) and isinstance(curve.index, pd.DatetimeIndex)


def _bars_value(value: Any) -> int | float | None:
    """Durations without a datetime index count bars: whole numbers stay ints."""
    number = json_safe(value)
    if isinstance(number, float) and number.is_integer():
        return int(number)
    return number if isinstance(number, int | float) else None


def stats_to_dict(stats: pd.Series) -> dict[str, Any]:
    """Every public statistic of a `Backtest.run()` result, JSON-safe and snake_case.

    Timedeltas become float seconds under a `_seconds` key; on data without a
    datetime index backtesting.py counts durations in bars, hence `_bars`.
    A key is present whenever backtesting emitted its label, even if the value is
    undefined (None), so the set of keys does not depend on whether a run traded.
    """
    datetime_index = _has_datetime_index(stats)
    result: dict[str, Any] = {}
    for label, value in stats.items():
        label = str(label)
        if label.startswith("_"):
            continue
        if _is_duration_label(label) or isinstance(value, pd.Timedelta | dt.timedelta | np.timedelta64):
            if datetime_index:
                result[_duration_key(label, datetime_index=True)] = json_safe(value)
            else:
                result[_duration_key(label, datetime_index=False)] = _bars_value(value)
            continue
        result[stat_key(label)] = json_safe(value)
    if result.get("num_trades") is not None:
        result["num_trades"] = int(result["num_trades"])
    return result


def strategy_params(stats: pd.Series) -> dict[str, Any]:
    """The parameters the run used: class-level defaults overridden by run()/optimize() values.

    backtesting.py keeps only the values passed to `run(**params)` in
    `_strategy._params`; the defaults live as plain class attributes, which is
    also how backtesting itself decides what may be a parameter.
    """
    strategy = _get(stats, "_strategy")
    if strategy is None:
        return {}
    cls = strategy if isinstance(strategy, type) else type(strategy)
    params: dict[str, Any] = {}
    # Walk from the most basic class to the most derived so that subclasses win.
    for klass in reversed(cls.__mro__):
        if klass.__module__.startswith("backtesting") or klass is object:
            continue
        for name, value in vars(klass).items():
            if _looks_like_param(name, value):
                params[name] = value
    overrides = getattr(strategy, "_params", None)
    if isinstance(overrides, Mapping):
        params.update(overrides)
    return {name: json_safe(value) for name, value in params.items()}


def _looks_like_param(name: str, value: Any) -> bool:
    if name.startswith("_"):
        return False
    if isinstance(value, staticmethod | classmethod | property | type):
        return False
    # Methods, imported modules and indicator functions are not parameters.
    return not callable(value) and not isinstance(value, types.ModuleType)


def _downsample_positions(n: int, max_points: int, keep: Iterable[int]) -> list[int]:
    """Evenly spaced positions plus the ones that must survive: the ends, then `keep`."""
    if n <= max_points:
        return list(range(n))
    must = {0, n - 1}
    for position in keep:
        if len(must) >= max_points:
            break
        if 0 <= position < n:
            must.add(position)
    budget = max_points - len(must)
    # linspace includes both ends, which are already kept, so collisions only
    # ever make the result shorter than max_points, never longer.
    spaced = np.linspace(0, n - 1, num=budget, dtype=np.int64).tolist() if budget > 0 else []
    return sorted(must | set(spaced))


def equity_curve(stats: pd.Series, max_points: int = 2000) -> list[list[Any]]:
    """[[time or bar, equity, drawdown %], ...], at most `max_points` long.

    Drawdown uses the sign of backtesting's 'Max. Drawdown [%]' (zero or
    negative), and the deepest point, the peak and the ends are always kept so
    a downsampled chart still shows the worst drawdown.
    """
    if max_points < 2:
        raise ValueError("max_points must be at least 2")
    curve = _get(stats, "_equity_curve")
    if not isinstance(curve, pd.DataFrame) or curve.empty or "Equity" not in curve:
        return []
    equity = curve["Equity"].to_numpy(dtype=float)
    drawdown = (
        curve["DrawdownPct"].to_numpy(dtype=float)
        if "DrawdownPct" in curve
        else 1 - equity / np.maximum.accumulate(equity)
    )
    extremes: list[int] = []
    for series in (drawdown, equity):
        if np.isfinite(series).any():
            extremes.append(int(np.nanargmax(series)))
            extremes.append(int(np.nanargmin(series)))
    positions = _downsample_positions(len(curve), max_points, extremes)
    # Column at a time: a json_safe call per value was most of a report's serialisation cost.
    times = json_column(curve.index[positions])
    return [list(row) for row in zip(times, _float_column(equity[positions]),
                                     _float_column(-drawdown[positions] * 100), strict=True)]


def _float_column(values: np.ndarray) -> list[float | None]:
    """json_safe of each float, for a float array: None for NaN and infinities, -0.0 as 0.0."""
    return [v + 0.0 if math.isfinite(v) else None for v in values.astype(float).tolist()]


def json_column(values: Any) -> list[Any]:
    """[json_safe(v) for v in values], for a whole column or index at once where its dtype allows."""
    array = values.to_numpy() if isinstance(values, pd.Series | pd.Index) else np.asarray(values)
    kind = array.dtype.kind
    if kind == "f":
        return _float_column(array)
    if kind in "iu":
        return [int(v) for v in array.tolist()]
    if kind == "b":
        return [bool(v) for v in array.tolist()]
    if kind == "M" and isinstance(values, pd.DatetimeIndex | pd.Series):
        stamps = pd.DatetimeIndex(values)
        return [None if stamp is pd.NaT else stamp.isoformat() for stamp in stamps]
    return [json_safe(v) for v in (values.tolist() if hasattr(values, "tolist") else list(values))]


_TRADE_COLUMNS: dict[str, str] = {
    "Size": "size",
    "EntryBar": "entry_bar",
    "ExitBar": "exit_bar",
    "EntryPrice": "entry_price",
    "ExitPrice": "exit_price",
    "SL": "sl",
    "TP": "tp",
    "PnL": "pnl",
    "Commission": "commission",
    "ReturnPct": "return_pct",
    "EntryTime": "entry_time",
    "ExitTime": "exit_time",
    "Duration": "duration",
    "Tag": "tag",
}


def trades_summary(stats: pd.Series, max_trades: int = 2000) -> list[dict[str, Any]]:
    """The first `max_trades` closed trades as JSON-safe dicts with snake_case keys.

    `return_pct` is in percent (backtesting's ReturnPct is a fraction) to match
    the `_pct` stats such as best_trade_pct. The per-trade indicator columns
    (Entry_SMA(C,10), ...) are left out: their number is unbounded.
    """
    trades = _get(stats, "_trades")
    if not isinstance(trades, pd.DataFrame) or trades.empty:
        return []
    datetime_index = _has_datetime_index(stats)
    head = trades.head(max_trades)
    keys: list[str] = []
    columns: list[list[Any]] = []
    for column in (c for c in _TRADE_COLUMNS if c in head.columns):
        key = _TRADE_COLUMNS[column]
        values = head[column]
        if column == "ReturnPct":
            converted = [_finite_or_none(v * 100) if isinstance(v, int | float) else None for v in json_column(values)]
        elif column == "Duration" and datetime_index:
            key, converted = key + SECONDS_SUFFIX, [json_safe(v) for v in values.tolist()]
        elif column == "Duration":
            key, converted = key + BARS_SUFFIX, [_bars_value(v) for v in values.tolist()]
        else:
            converted = json_column(values)
        keys.append(key)
        columns.append(converted)
    return [dict(zip(keys, row, strict=True)) for row in zip(*columns, strict=True)]


# --------------------------------------------------------------------------- printed text

# A printed stat: a label (single spaces inside), two or more spaces, a value.
_STAT_LINE = re.compile(r"^(?P<label>\S(?:.*?\S)?) {2,}(?P<value>\S(?:.*\S)?)\s*$")
# `print(f"Results: {stats}")` glues a prefix onto the first line.
_PREFIXED_START = re.compile(r"(?:^|\s)Start$")
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_TIMEDELTA = re.compile(r"^-?\d+ days? [+-]?\d{1,2}:\d{2}:\d{2}(?:\.\d+)?$")
_TIMESTAMP = re.compile(
    r"^\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?$"
)
_TRUNCATED_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2})?)?$")
_MISSING = frozenset({"--", "nan", "nat", "none", "<na>", "null", "n/a"})
_NONFINITE = frozenset({"inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"})


@dataclasses.dataclass(slots=True)
class _Block:
    lines: list[tuple[str, str]]

    @property
    def labels(self) -> set[str]:
        return {label for label, _ in self.lines}

    @property
    def complete(self) -> bool:
        return "Start" in self.labels and "# Trades" in self.labels


def _parse_value(raw: str) -> tuple[str, Any]:
    """(kind, value) of one printed value; kind is none/int/float/timedelta/timestamp/str."""
    text = raw.strip()
    lowered = text.lower()
    if lowered in _MISSING or not text:
        return "none", None
    if lowered in _NONFINITE:
        return "float", None
    if _INT.match(text):
        return "int", int(text)
    if _FLOAT.match(text):
        return "float", _finite_or_none(float(text))
    if _TIMEDELTA.match(text):
        return "timedelta", pd.Timedelta(text).total_seconds()
    if _TIMESTAMP.match(text):
        try:
            return "timestamp", pd.Timestamp(text).isoformat()
        except ValueError:
            return "str", text
    if text.endswith("...") and _TRUNCATED_TIMESTAMP.match(text[:-3]):
        # backtesting prints with display.max_colwidth=20, which cuts a tz-aware
        # Start/End to '2023-01-01 00:00...': the minute survives, the zone does not.
        try:
            return "timestamp", pd.Timestamp(text[:-3]).isoformat()
        except ValueError:
            return "str", text
    return "str", text


def _start_label(label: str) -> bool:
    return label == "Start" or bool(_PREFIXED_START.search(label))


def _find_blocks(text: str) -> list[_Block]:
    blocks: list[_Block] = []
    current: _Block | None = None
    for line in text.splitlines():
        stripped = line.strip()
        match = _STAT_LINE.match(stripped)
        if stripped.startswith(("dtype:", "Name:")):
            current = None  # the footer of print(stats)
            continue
        if match is None:
            current = None
            continue
        label, value = match["label"], match["value"]
        if _start_label(label):
            current = _Block(lines=[("Start", value)])
            blocks.append(current)
            continue
        if current is None:
            # A block whose head was cut off (a stdout tail) still starts at a known label.
            if label not in KNOWN_LABELS:
                continue
            current = _Block(lines=[])
            blocks.append(current)
        if label.startswith("_"):
            # `_strategy`, `_equity_curve`, `_trades` follow the last public stat.
            current = None
            continue
        current.lines.append((label, value))
    return blocks


def _block_to_dict(block: _Block) -> dict[str, Any]:
    parsed = [(label, *_parse_value(raw)) for label, raw in block.lines]
    kinds = {label: kind for label, kind, _ in parsed}
    # Start is a timestamp exactly when the data had a datetime index; without
    # it (a cut-off head), any printed timedelta tells the same.
    has_start = "Start" in kinds
    datetime_index = kinds["Start"] == "timestamp" if has_start else "timedelta" in kinds.values()
    result: dict[str, Any] = {}
    for label, kind, value in parsed:
        if _is_duration_label(label) or kind == "timedelta":
            if datetime_index:
                seconds = value if kind in ("timedelta", "none") else None
                result[_duration_key(label, datetime_index=True)] = seconds
            else:
                result[_duration_key(label, datetime_index=False)] = _bars_value(value)
            continue
        result[stat_key(label)] = value
    trades = result.get("num_trades")
    if isinstance(trades, float):
        result["num_trades"] = int(trades)
    return result


def parse_stats_text(text: str) -> dict[str, Any]:
    """Statistics from the text of `print(stats)`, for scripts whose run object is out of reach.

    Other output before, between and after is ignored. When stats were printed
    more than once (say before and after an optimisation), the last complete
    block wins; a block is complete when it runs from 'Start' to '# Trades'.
    If no block is complete (the head of stdout was cut off), the last block
    with at least three known statistics is used. Returns {} when there is none.
    """
    blocks = [b for b in _find_blocks(text) if b.lines]
    complete = [b for b in blocks if b.complete]
    if complete:
        return _block_to_dict(complete[-1])
    partial = [b for b in blocks if len(b.labels & KNOWN_LABELS) >= 3]
    return _block_to_dict(partial[-1]) if partial else {}
