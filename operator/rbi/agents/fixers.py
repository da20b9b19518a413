"""Deterministic rewrites of known failure patterns in generated backtesting.py (0.6.6) code.

These run before any LLM is asked to repair a strategy. Each fixer is a small pure
function over the source: it finds the failing shape with `ast` and rewrites only
that span (by character offsets), so the rest of the file stays byte-for-byte the
same, and running a fixer twice changes nothing the second time.

- `package(code)`: before the first run, make the code use what the sandbox has
  (pandas_ta -> TA-Lib, missing backtesting.lib helpers, pandas 3 frequency
  aliases, unused imports of modules the sandbox does not allow).
- `fix_for_failure(code, ...)`: after a failed run, only the fixers that match
  the failure's class and message.
- `diagnose_no_trades(code, stats)`: likely causes of a run with zero trades.
"""

from __future__ import annotations

import ast
import difflib
import math
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rbi.prepare.inspect_code import ALLOWED_MODULES

__all__ = [
    "Fix",
    "FixResult",
    "diagnose_no_trades",
    "fix_column_names",
    "fix_entry_price",
    "fix_for_failure",
    "fix_freq_alias",
    "fix_lib_helpers",
    "fix_pandas_ta",
    "fix_position_size",
    "fix_unused_imports",
    "package",
]


@dataclass(frozen=True, slots=True)
class Fix:
    fixer: str
    line: int | None
    description: str


@dataclass(frozen=True, slots=True)
class FixResult:
    code: str
    fixes: tuple[Fix, ...]
    # The code before the fixers ran; None when unknown (then any Fix counts as a change).
    original: str | None = field(default=None, repr=False, compare=False)

    @property
    def changed(self) -> bool:
        """True when the code was rewritten (a Fix may also be a note that changed nothing)."""
        return self.code != self.original if self.original is not None else bool(self.fixes)


Fixer = Callable[[str], tuple[str, list[Fix]]]


# --------------------------------------------------------------------------- source editing


@dataclass(frozen=True, slots=True)
class _Edit:
    start: int
    end: int
    text: str


class _Source:
    """Maps ast positions (1-based lines, UTF-8 byte columns) to offsets in the str."""

    def __init__(self, code: str) -> None:
        self.code = code
        self.lines = code.splitlines(keepends=True)
        self.starts: list[int] = []
        total = 0
        for line in self.lines:
            self.starts.append(total)
            total += len(line)
        self.starts.append(total)

    def offset(self, lineno: int, col: int) -> int:
        if lineno > len(self.lines):
            return len(self.code)
        line = self.lines[lineno - 1]
        return self.starts[lineno - 1] + len(line.encode("utf-8")[:col].decode("utf-8", errors="ignore"))

    def span(self, node: ast.AST) -> tuple[int, int]:
        start = self.offset(node.lineno, node.col_offset)  # type: ignore[attr-defined]
        end = self.offset(node.end_lineno, node.end_col_offset)  # type: ignore[attr-defined]
        return start, end

    def text(self, node: ast.AST) -> str:
        start, end = self.span(node)
        return self.code[start:end]

    def replace(self, node: ast.AST, text: str) -> _Edit:
        start, end = self.span(node)
        return _Edit(start, end, text)

    def line_start(self, lineno: int) -> int:
        return self.starts[min(lineno, len(self.lines) + 1) - 1] if lineno >= 1 else 0

    def indent(self, lineno: int) -> str:
        line = self.lines[lineno - 1]
        return line[: len(line) - len(line.lstrip(" \t"))]

    def comment(self, lineno: int) -> str:
        line = self.lines[lineno - 1] if 0 < lineno <= len(self.lines) else ""
        index = line.find("#")
        return line[index:].lower() if index >= 0 else ""


def _apply(code: str, edits: Iterable[_Edit]) -> str:
    """Apply non-overlapping edits; of overlapping ones the smallest (innermost) wins."""
    chosen: list[_Edit] = []
    for edit in sorted(edits, key=lambda e: (e.end - e.start, e.start)):
        if all(edit.end <= c.start or edit.start >= c.end for c in chosen):
            chosen.append(edit)
    for edit in sorted(chosen, key=lambda e: e.start, reverse=True):
        code = code[: edit.start] + edit.text + code[edit.end:]
    return code


def _parse(code: str) -> ast.Module | None:
    try:
        return ast.parse(code)
    except SyntaxError:
        return None


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _insert_helper(code: str, marker: str, helper: str) -> str:
    """Insert `helper` once, after the module docstring and the leading imports."""
    if marker in code:
        return code
    tree = _parse(code)
    if tree is None:
        return code
    source = _Source(code)
    after = 0
    for index, stmt in enumerate(tree.body):
        is_doc = index == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) \
            and isinstance(stmt.value.value, str)
        if is_doc or isinstance(stmt, ast.Import | ast.ImportFrom):
            after = stmt.end_lineno or stmt.lineno
        else:
            break
    position = source.line_start(after + 1) if after else 0
    prefix = code[:position]
    if prefix and not prefix.endswith("\n"):
        prefix += "\n"
    lead = "\n\n" if prefix else ""
    return prefix + lead + helper.rstrip("\n") + "\n\n\n" + code[position:].lstrip("\n")


def _by_line(fixes: list[Fix]) -> list[Fix]:
    return sorted(fixes, key=lambda f: (f.line is None, f.line or 0))


def _iterate(code: str, step: Callable[[str], tuple[list[_Edit], list[Fix]]], passes: int = 8) -> tuple[str, list[Fix]]:
    """Run an edit step until it finds nothing more (nested matches need several passes)."""
    fixes: list[Fix] = []
    for _ in range(passes):
        edits, found = step(code)
        if not edits:
            fixes.extend(f for f in _by_line(found) if f not in fixes)
            break
        new = _apply(code, edits)
        fixes.extend(f for f in _by_line(found) if f not in fixes)
        if new == code:
            break
        code = new
    return code, fixes


def _number(node: ast.expr) -> float | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _number(node.operand)
        if inner is not None:
            return -inner if isinstance(node.op, ast.USub) else inner
    return None


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


# --------------------------------------------------------------------------- position_size

SIZE_HELPER_MARKER = "def _rbi_size("
SIZE_HELPER = '''\
def _rbi_size(size, percent=False):
    """rbi: a size backtesting.py accepts: a fraction of equity in (0, 1) or a whole number of units.

    Values >= 1 are floored to whole units (at least 1); with percent=True they are read as
    percent of equity (50 -> 0.5, 100 or more -> 0.9999). Zero, negative or non-finite sizes
    become 1e-9, a fraction too small to buy one unit: backtesting.py cancels that order
    instead of failing the whole run.
    """
    import math
    size = float(size)
    if not math.isfinite(size) or size <= 0:
        return 1e-9
    if percent and size >= 1:
        return min(size / 100.0, 0.9999)
    if size < 1:
        return size
    return max(1, math.floor(size))
'''

_PERCENT_WORDS = ("percent", "pct", "%")
_ALL_IN_WORDS = ("equity", "all in", "all-in", "fraction", "full", "capital", "100")


def _format_fraction(value: float) -> str:
    return repr(round(value, 6))


def _size_step(code: str) -> tuple[list[_Edit], list[Fix]]:
    tree = _parse(code)
    if tree is None:
        return [], []
    source = _Source(code)
    edits: list[_Edit] = []
    fixes: list[Fix] = []
    need_helper = False
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("buy", "sell")):
            continue
        for keyword in node.keywords:
            if keyword.arg != "size":
                continue
            value = keyword.value
            text = source.text(value)
            comment = source.comment(value.lineno)
            percent = any(w in comment for w in _PERCENT_WORDS) or bool(re.search(r"pct|percent|perc\b", text, re.I))
            literal = _number(value)
            line = value.lineno
            if literal is not None:
                if percent and literal >= 1:
                    new = _format_fraction(min(literal / 100.0, 0.9999))
                    why = f"size={text} is a percentage of equity; backtesting.py wants a fraction in (0, 1)"
                elif literal == 1.0 and isinstance(value, ast.Constant) and isinstance(value.value, float) \
                        and any(w in comment for w in _ALL_IN_WORDS):
                    new, why = "0.9999", "size=1.0 meant all equity; a fraction must be below 1"
                elif 0 < literal < 1 or (literal >= 1 and literal == math.floor(literal)):
                    continue
                elif literal > 1:
                    new = str(max(1, math.floor(literal)))
                    why = (f"size={text} is neither a fraction in (0, 1) nor whole units; "
                           f"rounded down to {new} whole units")
                else:
                    new, need_helper = f"_rbi_size({text})", True
                    why = (f"size={text} is not a valid order size; _rbi_size() turns it into a fraction too small "
                           "to buy one unit, so backtesting.py cancels the order instead of failing")
            else:
                if isinstance(value, ast.Call) and _dotted(value.func) == "_rbi_size":
                    continue
                flag = ", percent=True" if percent else ""
                new, need_helper = f"_rbi_size({text}{flag})", True
                why = (f"size={text} is computed and may be a non-whole number of units or <= 0; "
                       "_rbi_size() keeps fractions in (0, 1), floors larger values to whole units (min 1)"
                       + (" and reads values >= 1 as percent" if percent else ""))
            edits.append(source.replace(value, new))
            fixes.append(Fix("position_size", line, why))
    if need_helper and SIZE_HELPER_MARKER not in code:
        # The helper goes in by a second pass (see fix_position_size); an empty edit marks the need.
        fixes.append(Fix("position_size", None, "added the _rbi_size() helper at the top of the module"))
    return edits, fixes


def fix_position_size(code: str) -> tuple[str, list[Fix]]:
    """Make every `buy(size=...)`/`sell(size=...)` a size backtesting.py accepts."""
    new, fixes = _iterate(code, _size_step, passes=1)
    if "_rbi_size(" in new and SIZE_HELPER_MARKER not in new:
        new = _insert_helper(new, SIZE_HELPER_MARKER, SIZE_HELPER)
    return new, fixes


# --------------------------------------------------------------------------- freq_alias

# Calls whose first positional argument is a frequency or offset string.
_FREQ_FIRST_ARG = frozenset({"resample", "asfreq", "to_offset", "resample_apply", "floor", "ceil", "round", "rolling"})
_FREQ_KEYWORDS = frozenset({"freq", "rule"})
_UNIT_MAP = {
    "H": "h", "BH": "bh", "CBH": "cbh", "T": "min", "MIN": "min", "Min": "min", "S": "s", "L": "ms", "U": "us",
    "N": "ns", "M": "ME", "BM": "BME", "SM": "SME", "CBM": "CBME", "Q": "QE", "BQ": "BQE", "A": "YE", "Y": "YE",
    "BA": "BYE", "BY": "BYE", "AS": "YS", "BAS": "BYS", "SEC": "s", "Sec": "s", "MS": "MS",
}  # fmt: skip
_FREQ_RE = re.compile(r"(\s*)(\d*)(\s*)([A-Za-z]+)((?:-[A-Za-z]{3})?)(\s*)")


def _offset_ok(alias: str) -> bool:
    from pandas.tseries.frequencies import to_offset

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            to_offset(alias)
    except (ValueError, TypeError):
        return False
    return True


def modern_freq(alias: str) -> str | None:
    """The pandas 3 spelling of an alias the installed pandas rejects, or None when none is needed."""
    if _offset_ok(alias):
        return None
    match = _FREQ_RE.fullmatch(alias)
    if not match:
        return None
    lead, number, gap, unit, anchor, trail = match.groups()
    mapped = _UNIT_MAP.get(unit) or _UNIT_MAP.get(unit.upper())
    if mapped is None and unit.lower() in ("min", "h", "s", "ms", "us", "ns"):
        mapped = unit.lower()
    if mapped is None:
        return None
    new = f"{lead}{number}{gap}{mapped}{anchor}{trail}"
    return new if _offset_ok(new) else None


def _freq_strings(tree: ast.AST) -> Iterable[ast.Constant]:
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        candidates: list[ast.expr] = [k.value for k in node.keywords if k.arg in _FREQ_KEYWORDS]
        if name in _FREQ_FIRST_ARG and node.args:
            candidates.append(node.args[0])
        for value in candidates:
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                yield value


def _freq_step(code: str) -> tuple[list[_Edit], list[Fix]]:
    tree = _parse(code)
    if tree is None:
        return [], []
    source = _Source(code)
    edits: list[_Edit] = []
    fixes: list[Fix] = []
    for constant in _freq_strings(tree):
        old = str(constant.value)
        new = modern_freq(old)
        if new is None:
            continue
        literal = source.text(constant)
        quote = literal[-1] if literal and literal[-1] in "'\"" else "'"
        prefix = literal[: len(literal) - len(literal.lstrip("rRuU"))]
        edits.append(source.replace(constant, f"{prefix}{quote}{new}{quote}"))
        fixes.append(Fix("freq_alias", constant.lineno,
                         f"frequency {old!r} is not accepted by pandas 3; it is spelled {new!r}"))
    return edits, fixes


def fix_freq_alias(code: str) -> tuple[str, list[Fix]]:
    """Rewrite frequency strings passed to resample/asfreq/date_range/freq=/... into pandas 3 aliases."""
    return _iterate(code, _freq_step, passes=1)


# --------------------------------------------------------------------------- entry_price

_TRADE_ONLY = frozenset({"entry_price", "entry_time", "entry_bar"})


def _self_name(function: ast.AST | None) -> str | None:
    if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef) and function.args.args:
        return function.args.args[0].arg
    return None


def _entry_step(code: str) -> tuple[list[_Edit], list[Fix]]:
    tree = _parse(code)
    if tree is None:
        return [], []
    source = _Source(code)
    parents = _parents(tree)
    edits: list[_Edit] = []
    fixes: list[Fix] = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and node.attr in _TRADE_ONLY and isinstance(node.ctx, ast.Load)):
            continue
        inner = node.value
        if isinstance(inner, ast.Attribute) and inner.attr == "position":
            base = source.text(inner.value)
        elif isinstance(inner, ast.Name) and inner.id == "position":
            scope: ast.AST | None = parents.get(node)
            while scope is not None and not isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
                scope = parents.get(scope)
            base_name = _self_name(scope)
            if base_name is None:
                continue
            base = base_name
        else:
            continue
        old = source.text(node)
        new = f"{base}.trades[-1].{node.attr}"
        edits.append(source.replace(node, new))
        fixes.append(Fix("entry_price", node.lineno,
                         f"{old} does not exist (Position has no {node.attr}); using the latest open trade's: "
                         f"{new} (assumes a position is open, as the original code did)"))
    return edits, fixes


def fix_entry_price(code: str) -> tuple[str, list[Fix]]:
    """`position.entry_price` (and entry_time/entry_bar) -> the latest open trade's value."""
    return _iterate(code, _entry_step, passes=1)


# --------------------------------------------------------------------------- column_names

OHLCV = ("Open", "High", "Low", "Close", "Volume")
_OHLCV_BY_KEY = {c.lower(): c for c in OHLCV}
NORMALISE_MARKER = "# rbi: normalise column names"


def _canonical(name: str) -> str | None:
    return _OHLCV_BY_KEY.get(name.strip().lower())


def _data_column_step(code: str) -> tuple[list[_Edit], list[Fix]]:
    tree = _parse(code)
    if tree is None:
        return [], []
    source = _Source(code)
    edits: list[_Edit] = []
    fixes: list[Fix] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "data" \
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self":
            right = _canonical(node.attr)
            if right and right != node.attr:
                end = source.offset(node.end_lineno or node.lineno, node.end_col_offset or 0)
                edits.append(_Edit(end - len(node.attr), end, right))
                fixes.append(Fix("column_names", node.lineno,
                                 f"self.data.{node.attr} -> self.data.{right}: backtesting.py names the columns "
                                 "Open, High, Low, Close, Volume"))
        elif isinstance(node, ast.Subscript) and _dotted(node.value) == "self.data" \
                and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            right = _canonical(node.slice.value)
            if right and right != node.slice.value:
                edits.append(source.replace(node.slice, repr(right)))
                fixes.append(Fix("column_names", node.lineno,
                                 f"self.data[{node.slice.value!r}] -> self.data[{right!r}]"))
    return edits, fixes


def _normalise_line(target: str, capitalise: bool) -> str:
    case = "capitalize" if capitalise else "lower"
    return (f"{target} = {target}.rename(columns=lambda c: str(c).strip().{case}() if str(c).strip().lower() in "
            f"('open', 'high', 'low', 'close', 'volume') else str(c).strip())"
            f".loc[:, lambda d: ~d.columns.astype(str).str.startswith('Unnamed')]  {NORMALISE_MARKER}")


def _script_columns(code: str, capitalise: bool) -> tuple[str, list[Fix]]:
    tree = _parse(code)
    if tree is None:
        return code, []
    source = _Source(code)
    edits: list[_Edit] = []
    fixes: list[Fix] = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Call) and _dotted(node.value.func).endswith("read_csv")):
            continue
        end_line = node.end_lineno or node.lineno
        following = source.lines[end_line] if end_line < len(source.lines) else ""
        if NORMALISE_MARKER in following:
            continue
        target = node.targets[0].id
        line = source.indent(node.lineno) + _normalise_line(target, capitalise) + "\n"
        position = source.line_start(end_line + 1)
        prefix_newline = "" if code[:position].endswith("\n") else "\n"
        edits.append(_Edit(position, position, prefix_newline + line))
        fixes.append(Fix("column_names", end_line + 1,
                         f"after reading {target} from CSV, strip the headers, "
                         f"{'capitalise' if capitalise else 'lower'} the OHLCV names and drop 'Unnamed' columns "
                         "(the CSV has ' open'-style headers and a trailing comma)"))
    return _apply(code, edits), fixes


def fix_column_names(code: str, *, missing: str | None = None) -> tuple[str, list[Fix]]:
    """`self.data.close` -> `self.data.Close`; with `missing` (a KeyError's column), normalise CSV reads too."""
    code, fixes = _iterate(code, _data_column_step, passes=1)
    if missing is not None and _canonical(missing):
        code, more = _script_columns(code, capitalise=missing.strip()[:1].isupper())
        fixes.extend(more)
    return code, fixes


# --------------------------------------------------------------------------- lib_helpers

# dir(backtesting.lib) in 0.6.6, public names.
LIB_NAMES_066 = frozenset({
    "Backtest", "FractionalBacktest", "MultiBacktest", "OHLCV_AGG", "SignalStrategy", "Strategy", "TRADES_AGG",
    "TrailingStrategy", "barssince", "compute_stats", "cross", "crossover", "plot_heatmaps", "quantile",
    "random_ohlc_data", "resample_apply",
})  # fmt: skip
_TEST_NAMES = frozenset({"SMA", "GOOG", "EURUSD", "BTCUSD"})


def _alias_text(alias: ast.alias) -> str:
    return f"{alias.name} as {alias.asname}" if alias.asname else alias.name


def fix_lib_helpers(code: str) -> tuple[str, list[Fix]]:
    """Imports of names that backtesting.lib 0.6.6 lacks: crossunder(a, b) -> crossover(b, a); SMA etc. from .test."""
    tree = _parse(code)
    if tree is None:
        return code, []
    source = _Source(code)
    edits: list[_Edit] = []
    fixes: list[Fix] = []
    crossunder_names: set[str] = set()
    crossover_name = "crossover"
    for node in ast.walk(tree):
        if not (isinstance(node, ast.ImportFrom) and node.module == "backtesting.lib" and node.level == 0):
            continue
        missing = [a for a in node.names if a.name not in LIB_NAMES_066 and a.name != "*"]
        if not missing:
            continue
        kept = [a for a in node.names if a.name in LIB_NAMES_066 or a.name == "*"]
        moved = [a for a in missing if a.name in _TEST_NAMES]
        for alias in missing:
            if alias.name == "crossunder":
                crossunder_names.add(alias.asname or alias.name)
                existing = [a for a in kept if a.name == "crossover"]
                if existing:
                    crossover_name = existing[0].asname or "crossover"
                else:
                    kept.append(ast.alias(name="crossover"))
                fixes.append(Fix("lib_helpers", node.lineno,
                                 "backtesting.lib has no crossunder; crossunder(a, b) is crossover(b, a)"))
            elif alias.name in _TEST_NAMES:
                fixes.append(Fix("lib_helpers", node.lineno,
                                 f"{alias.name} lives in backtesting.test, not backtesting.lib"))
            else:
                kept.append(alias)
                fixes.append(Fix("lib_helpers", node.lineno,
                                 f"backtesting.lib 0.6.6 has no {alias.name!r} and there is no known equivalent; "
                                 "left for the repair step"))
        if not moved and len(kept) == len(node.names) and "crossunder" not in {a.name for a in missing}:
            continue
        indent = source.indent(node.lineno)
        parts = []
        if kept:
            parts.append("from backtesting.lib import " + ", ".join(_alias_text(a) for a in kept))
        if moved:
            parts.append("from backtesting.test import " + ", ".join(_alias_text(a) for a in moved))
        edits.append(source.replace(node, ("\n" + indent).join(parts) if parts else "pass"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in crossunder_names \
                and len(node.args) == 2 and not node.keywords:
            first, second = (source.text(a) for a in node.args)
            edits.append(source.replace(node, f"{crossover_name}({second}, {first})"))
            fixes.append(Fix("lib_helpers", node.lineno, f"{source.text(node)} -> {crossover_name}({second}, {first})"))
    return _apply(code, edits), fixes


# --------------------------------------------------------------------------- pandas_ta

# pandas_ta name -> (TA-Lib function, keyword renames). Positional order is the same in both libraries.
_TA_SINGLE: dict[str, tuple[str, dict[str, str]]] = {
    "sma": ("SMA", {"length": "timeperiod", "close": "real"}),
    "ema": ("EMA", {"length": "timeperiod", "close": "real"}),
    "wma": ("WMA", {"length": "timeperiod", "close": "real"}),
    "dema": ("DEMA", {"length": "timeperiod", "close": "real"}),
    "tema": ("TEMA", {"length": "timeperiod", "close": "real"}),
    "rsi": ("RSI", {"length": "timeperiod", "close": "real"}),
    "roc": ("ROC", {"length": "timeperiod", "close": "real"}),
    "mom": ("MOM", {"length": "timeperiod", "close": "real"}),
    "atr": ("ATR", {"length": "timeperiod"}),
    "natr": ("NATR", {"length": "timeperiod"}),
    "cci": ("CCI", {"length": "timeperiod"}),
    "willr": ("WILLR", {"length": "timeperiod"}),
    "mfi": ("MFI", {"length": "timeperiod"}),
    "obv": ("OBV", {}),
}
# Multi-output functions: a helper returning pandas_ta's own columns, in pandas_ta's order.
_TA_MULTI = {"macd": "_rbi_ta_macd", "bbands": "_rbi_ta_bbands"}
# pandas_ta keywords with no TA-Lib meaning that can be dropped without changing the values.
_TA_DROPPABLE = frozenset({"append", "talib", "fillna", "fill_method"})
# backtesting.py's own Strategy.I keywords.
_I_KEYWORDS = frozenset({"name", "plot", "overlay", "color", "scatter"})

TA_HELPERS_MARKER = "def _rbi_ta_macd("
TA_HELPERS = '''\
def _rbi_ta_macd(close, fast=12, slow=26, signal=9, **_ignored):
    """rbi: pandas_ta.macd on TA-Lib; same columns and order as pandas_ta (MACD, histogram, signal)."""
    import numpy as np
    import pandas as pd
    import talib
    index = close.index if isinstance(close, pd.Series) else None
    fast, slow, signal = int(fast or 12), int(slow or 26), int(signal or 9)
    macd, macd_signal, hist = talib.MACD(np.asarray(close, dtype=float), fastperiod=fast, slowperiod=slow,
                                         signalperiod=signal)
    tag = f"{fast}_{slow}_{signal}"
    return pd.DataFrame({f"MACD_{tag}": macd, f"MACDh_{tag}": hist, f"MACDs_{tag}": macd_signal}, index=index)


def _rbi_ta_bbands(close, length=5, std=2.0, **_ignored):
    """rbi: pandas_ta.bbands on TA-Lib; same columns and order as pandas_ta (lower, mid, upper, bandwidth, %b)."""
    import numpy as np
    import pandas as pd
    import talib
    index = close.index if isinstance(close, pd.Series) else None
    values = np.asarray(close, dtype=float)
    length, std = int(length or 5), float(std or 2.0)
    upper, mid, lower = talib.BBANDS(values, timeperiod=length, nbdevup=std, nbdevdn=std, matype=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        bandwidth = (upper - lower) / mid * 100.0
        percent = (values - lower) / (upper - lower)
    tag = f"{length}_{std}"
    return pd.DataFrame({f"BBL_{tag}": lower, f"BBM_{tag}": mid, f"BBU_{tag}": upper, f"BBB_{tag}": bandwidth,
                         f"BBP_{tag}": percent}, index=index)
'''


def _pandas_ta_aliases(tree: ast.Module) -> list[tuple[ast.Import, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "pandas_ta":
                    found.append((node, alias.asname or "pandas_ta"))
    return found


def _renamed_call(source: _Source, call: ast.Call, func: str, renames: Mapping[str, str],
                  skip: frozenset[str] = frozenset()) -> tuple[str, list[str]]:
    """The call's text with `func`, renamed keywords and droppable keywords removed."""
    parts = [source.text(a) for a in call.args]
    dropped = []
    for keyword in call.keywords:
        if keyword.arg is None:
            parts.append(source.text(keyword))
        elif keyword.arg in _TA_DROPPABLE and keyword.arg not in skip:
            dropped.append(keyword.arg)
        else:
            name = keyword.arg if keyword.arg in skip else renames.get(keyword.arg, keyword.arg)
            parts.append(f"{name}={source.text(keyword.value)}")
    return f"{func}({', '.join(parts)})", dropped


def _ta_target(node: ast.expr, alias: str) -> str | None:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == alias:
        return node.attr
    return None


def _ta_supported(name: str, call: ast.Call | None, skip: frozenset[str] = frozenset()) -> bool:
    if name in _TA_MULTI:
        return True
    if name not in _TA_SINGLE:
        return False
    if call is None:
        return True
    allowed = set(_TA_SINGLE[name][1]) | _TA_DROPPABLE | skip | {"high", "low", "close", "volume", "real"}
    return all(k.arg is None or k.arg in allowed for k in call.keywords)


def _pandas_ta_step(code: str) -> tuple[list[_Edit], list[Fix]]:
    tree = _parse(code)
    if tree is None:
        return [], []
    source = _Source(code)
    edits: list[_Edit] = []
    fixes: list[Fix] = []
    for _, alias in _pandas_ta_aliases(tree):
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _ta_target(node.func, alias)
            if name is not None and _ta_supported(name, node):
                if name in _TA_MULTI:
                    new = _TA_MULTI[name] + source.text(node)[len(source.text(node.func)):]
                    dropped: list[str] = []
                else:
                    new, dropped = _renamed_call(source, node, "talib." + _TA_SINGLE[name][0], _TA_SINGLE[name][1])
                edits.append(source.replace(node, new))
                note = f"; dropped {', '.join(dropped)}=" if dropped else ""
                fixes.append(Fix("pandas_ta", node.lineno, f"{alias}.{name}(...) -> {new.split('(')[0]}(...){note}"))
            elif node.args and isinstance(node.func, ast.Attribute) and node.func.attr == "I":
                name = _ta_target(node.args[0], alias)
                if name is None or not _ta_supported(name, node, _I_KEYWORDS):
                    continue
                if name in _TA_MULTI:
                    new_func, renames = _TA_MULTI[name], {}
                else:
                    new_func, renames = "talib." + _TA_SINGLE[name][0], _TA_SINGLE[name][1]
                text, dropped = _renamed_call(source, node, source.text(node.func), renames, _I_KEYWORDS)
                first = source.text(node.args[0])
                text = text.replace(first, new_func, 1)
                edits.append(source.replace(node, text))
                note = f"; dropped {', '.join(dropped)}=" if dropped else ""
                fixes.append(Fix("pandas_ta", node.lineno,
                                 f"self.I({alias}.{name}, ...) -> self.I({new_func}, ...){note}"))
    return edits, fixes


def _remaining_ta_uses(tree: ast.Module, alias: str) -> list[ast.Attribute]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
            and n.value.id == alias]


def fix_pandas_ta(code: str) -> tuple[str, list[Fix]]:
    """pandas_ta (not installed in the sandbox) -> TA-Lib, with notes for calls that have no mapping."""
    tree = _parse(code)
    if tree is None or not _pandas_ta_aliases(tree):
        return code, []
    code, fixes = _iterate(code, _pandas_ta_step)
    if "_rbi_ta_" in code:
        code = _insert_helper(code, TA_HELPERS_MARKER, TA_HELPERS)
    tree = _parse(code)
    if tree is None:
        return code, fixes
    source = _Source(code)
    has_talib = any(isinstance(n, ast.Import) and any(a.name == "talib" and a.asname is None for a in n.names)
                    for n in tree.body)
    needs_talib = "talib." in code and not has_talib
    edits: list[_Edit] = []
    for node, alias in _pandas_ta_aliases(tree):
        leftover = _remaining_ta_uses(tree, alias)
        for use in leftover:
            fixes.append(Fix("pandas_ta", use.lineno,
                             f"{source.text(use)} has no TA-Lib mapping here; left as is (pandas_ta is not installed)"))
        accessor = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "ta"
                    and not (isinstance(n.value, ast.Name) and n.value.id == alias)]
        for use in accessor:
            fixes.append(Fix("pandas_ta", use.lineno, f"the DataFrame accessor {source.text(use)}.* needs pandas_ta; "
                                                      "not rewritten (use talib on the columns)"))
        if leftover or accessor or len(node.names) != 1:
            if needs_talib:
                indent = source.indent(node.lineno)
                edits.append(_Edit(source.span(node)[1], source.span(node)[1], f"\n{indent}import talib"))
                needs_talib = False
            continue
        replacement = "import talib" if needs_talib else ""
        needs_talib = False
        if replacement:
            edits.append(source.replace(node, replacement))
        else:
            start = source.line_start(node.lineno)
            end = source.line_start((node.end_lineno or node.lineno) + 1)
            edits.append(_Edit(start, end, ""))
        fixes.append(Fix("pandas_ta", node.lineno, "import pandas_ta (not installed) -> "
                         + ("import talib" if replacement else "removed (talib is already imported)")))
    return _apply(code, edits), fixes


# --------------------------------------------------------------------------- unused_imports


def _used_names(tree: ast.Module) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def fix_unused_imports(code: str) -> tuple[str, list[Fix]]:
    """Drop imports of modules outside ALLOWED_MODULES whose names the code never uses."""
    tree = _parse(code)
    if tree is None:
        return code, []
    source = _Source(code)
    parents = _parents(tree)
    used = _used_names(tree)
    edits: list[_Edit] = []
    fixes: list[Fix] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
            bound = [a.asname or a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
            bound = [a.asname or a.name for a in node.names]
        else:
            continue
        if all(m.split(".")[0] in ALLOWED_MODULES for m in modules):
            continue
        if any(m.split(".")[0] in ALLOWED_MODULES for m in modules) or any(b in used or b == "*" for b in bound):
            continue
        start, end = source.span(node)
        line_text = source.lines[node.lineno - 1]
        whole_line = line_text.strip() == code[start:end].strip() and node.lineno == node.end_lineno
        parent = parents.get(node)
        body = getattr(parent, "body", None)
        alone = isinstance(body, list) and len(body) == 1 and not isinstance(parent, ast.Module)
        if alone or not whole_line:
            edits.append(_Edit(start, end, "pass"))
        else:
            edits.append(_Edit(source.line_start(node.lineno), source.line_start(node.lineno + 1), ""))
        fixes.append(Fix("unused_imports", node.lineno,
                         f"removed unused import of {', '.join(modules)} (not available in the sandbox)"))
    return _apply(code, edits), fixes


# --------------------------------------------------------------------------- entry points


def _line_map(old: str, new: str) -> Callable[[int | None], int | None]:
    """Maps a line of `new` to the line of `old` it came from (inserted lines map to where they went in)."""
    old_lines, new_lines = old.splitlines(), new.splitlines()
    table: dict[int, int] = {}
    matcher = difflib.SequenceMatcher(a=old_lines, b=new_lines, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        for j in range(j1, j2):
            if tag == "equal":
                table[j + 1] = i1 + (j - j1) + 1
            elif tag == "replace":
                table[j + 1] = i1 + min(j - j1, i2 - i1 - 1) + 1
            else:
                table[j + 1] = min(i1 + 1, max(len(old_lines), 1))

    def back(line: int | None) -> int | None:
        return table.get(line, line) if line is not None else None

    return back


def _run(code: str, fixers: Iterable[Fixer]) -> FixResult:
    """Run fixers in turn; every Fix.line is translated back to a line of the original code."""
    fixes: list[Fix] = []
    original = code
    if _parse(code) is None:
        return FixResult(code, (), original)
    to_original: list[Callable[[int | None], int | None]] = []
    for fixer in fixers:
        new, found = fixer(code)
        if new != code and _parse(new) is None:  # a fixer must never break the code
            continue
        for fix in found:
            line = fix.line
            for back in reversed(to_original):
                line = back(line)
            fixes.append(Fix(fix.fixer, line, fix.description))
        if new != code:
            to_original.append(_line_map(code, new))
        code = new
    return FixResult(code, tuple(fixes), original)


def package(code: str) -> FixResult:
    """Make the code use what the sandbox has, before the first run."""
    return _run(code, (fix_pandas_ta, fix_lib_helpers, fix_freq_alias, fix_unused_imports))


_SIZE_MESSAGE = "size must be a positive fraction"
_QUOTED = re.compile(r"""['"]([A-Za-z_ ]+)['"]""")


def fix_for_failure(code: str, *, error_type: str, message: str, line: int | None) -> FixResult:
    """After a failed run, apply only the fixers that match the failure's class and message.

    `line` is accepted for the caller's convenience; fixers rewrite every instance of the
    pattern, since a second instance would fail the next run in the same way.
    """
    del line
    fixers: list[Fixer] = []
    if _SIZE_MESSAGE in message:
        fixers.append(fix_position_size)
    if "Invalid frequency" in message or "no longer supported for offsets" in message \
            or re.search(r"Did you mean \w+\?", message):
        fixers.append(fix_freq_alias)
    if "'Position' object has no attribute" in message:
        fixers.append(fix_entry_price)
    if "KeyError" in message or "not in data" in message:
        # `KeyError: 'Close'`, `Column 'close' not in data`, `"None of [Index(['Open', ...])] are in the [columns]"`
        columns = [q for q in _QUOTED.findall(message) if _canonical(q)]
        if columns:
            missing = columns[0]
            fixers.append(lambda c: fix_column_names(c, missing=missing))
    if error_type in ("import_error", "validation_error"):
        if "pandas_ta" in message:
            fixers.append(fix_pandas_ta)
        if "backtesting.lib" in message:
            fixers.append(fix_lib_helpers)
        fixers.append(fix_unused_imports)
    return _run(code, fixers)


# --------------------------------------------------------------------------- zero trades


def _stat(stats: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in stats and stats[key] is not None:
            return stats[key]
    return None


def _method(tree: ast.Module, name: str) -> list[ast.FunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name]


def _orders(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr in ("buy", "sell")]


def _guarded_by_position(call: ast.AST, parents: Mapping[ast.AST, ast.AST]) -> bool:
    """True when the order sits in the body of `if self.position:` (an order only when already in a trade)."""
    child, node = call, parents.get(call)
    while node is not None:
        if isinstance(node, ast.If) and child in node.body and _dotted(node.test) == "self.position":
            return True
        child, node = node, parents.get(node)
    return False


_PERIOD_KEYWORDS = frozenset({"timeperiod", "length", "window", "period", "n", "span", "lookback"})


def _periods(tree: ast.Module) -> list[tuple[int, int, str]]:
    found: list[tuple[int, int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg in _PERIOD_KEYWORDS:
            value = _number(node.value)
            if value is not None:
                found.append((int(value), node.value.lineno, f"{node.arg}={int(value)}"))
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and re.search(r"period|window|length|lookback|span", node.targets[0].id, re.I):
            value = _number(node.value)
            if value is not None:
                found.append((int(value), node.lineno, f"{node.targets[0].id} = {int(value)}"))
    return found


def diagnose_no_trades(code: str, stats: Mapping[str, Any]) -> list[str]:
    """Likely causes, most specific first, for a run that finished with zero trades.

    `stats` is a run's statistics (rbi's snake_case dict or backtesting.py's labels); an
    optional `bars` key gives the number of bars the strategy saw.
    """
    tree = _parse(code)
    if tree is None:
        return ["the code does not parse"]
    source = _Source(code)
    parents = _parents(tree)
    causes: list[str] = []
    orders = _orders(tree)
    nexts = _method(tree, "next")
    if not orders:
        causes.append("buy() or sell() is never called: the strategy places no orders")
    elif nexts and not any(_orders(n) for n in nexts) and not any(
            isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr not in ("buy", "sell")
            for n in ast.walk(nexts[0])):
        causes.append("next() never calls buy() or sell() (nor any helper that might)")
    elif all(_guarded_by_position(o, parents) for o in orders):
        causes.append(f"every buy()/sell() is inside `if self.position:` (line {orders[0].lineno}), "
                      "so no order is placed while flat and no first trade can open")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _dotted(node.func).split(".")[-1] in ("crossover", "cross") \
                and len(node.args) == 2 and ast.dump(node.args[0]) == ast.dump(node.args[1]):
            causes.append(f"line {node.lineno}: {source.text(node)} compares a series with itself and is never true")
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and "rsi" in source.text(node.left).lower():
            bound = _number(node.comparators[0])
            if bound is not None and ((isinstance(node.ops[0], ast.Lt | ast.LtE) and bound <= 0)
                                      or (isinstance(node.ops[0], ast.Gt | ast.GtE) and bound >= 100)):
                causes.append(f"line {node.lineno}: {source.text(node)} can never be true (RSI is within 0..100)")
    equity = _stat(stats, "equity_final", "Equity Final [$]")
    for order in orders:
        for keyword in order.keywords:
            size = _number(keyword.value) if keyword.arg == "size" else None
            if size is not None and size >= 1 and size == math.floor(size):
                cash = f" (cash {equity:,.0f})" if isinstance(equity, int | float) else ""
                causes.append(f"line {order.lineno}: size={source.text(keyword.value)} asks for "
                              f"{int(size)} whole units; when that costs more than the cash{cash}, backtesting.py "
                              "cancels every order for insufficient margin (use a fraction such as 0.5)")
    bars = _stat(stats, "bars", "duration_bars")
    for period, lineno, text in _periods(tree):
        if isinstance(bars, int | float) and period >= bars:
            causes.append(f"line {lineno}: {text} is longer than the {int(bars)} bars of data; the indicator is "
                          "all NaN and no condition on it is ever true")
        elif not isinstance(bars, int | float) and period >= 5000:
            causes.append(f"line {lineno}: {text} is a very long period; the indicator may be NaN for most or all "
                          "of the data")
    if not causes:
        causes.append("no structural cause found: the entry conditions were never all true on this data "
                      "(check thresholds and that the indicators are not NaN)")
    return causes
