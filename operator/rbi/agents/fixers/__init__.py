"""Deterministic rewrites of known failure patterns in generated backtesting.py (0.6.6) code.

These run before any LLM is asked to repair a strategy. Each fixer is a small pure
function over the source: it finds the failing shape with `ast` and rewrites only
that span (by character offsets), so the rest of the file stays byte-for-byte the
same, and running a fixer twice changes nothing the second time.

- `package(code)`: before the first run, make the code use what the sandbox has
  (missing backtesting.lib helpers, pandas 3 frequency aliases, unused imports of
  modules the sandbox does not allow). `import pandas_ta` runs unchanged: the
  sandbox serves it from pandas-ta-classic (rbi.compat.pandas_ta); the TA-Lib
  rewrite (`ta_lib`) is only a repair for an import error naming pandas_ta.
- `fix_for_failure(code, ...)`: after a failed run, only the fixers that match
  the failure's class and message.
- `diagnose_no_trades(code, stats)`: likely causes of a run with zero trades.

One module per fixer (`array_series`, `position_size`, `freq_alias`, `entry_price`, `position_stops`, `data_df`,
`indicator_shape`, `pandas_ta_series`, `index_column`, `column_names`, `lowercase_columns`, `lib_helpers`, `ta_lib` for
pandas_ta, `unused_imports`) and `no_trades`; `_source` holds the span editing they share.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable, Iterable

from rbi.agents.fixers._source import Fix, Fixer, FixResult, _parse
from rbi.agents.fixers.array_series import MESSAGE as ARRAY_MESSAGE
from rbi.agents.fixers.array_series import fix_array_series
from rbi.agents.fixers.column_names import _canonical, fix_column_names
from rbi.agents.fixers.data_df import fix_data_df
from rbi.agents.fixers.entry_price import fix_entry_price
from rbi.agents.fixers.freq_alias import fix_freq_alias, modern_freq
from rbi.agents.fixers.index_column import fix_index_column
from rbi.agents.fixers.indicator_shape import fix_indicator_shape
from rbi.agents.fixers.lib_helpers import fix_lib_helpers
from rbi.agents.fixers.lowercase_columns import BACKTEST_MESSAGE, NAMES_HELPER_MARKER, fix_lowercase_columns
from rbi.agents.fixers.no_trades import diagnose_no_trades
from rbi.agents.fixers.pandas_ta_series import fix_pandas_ta_series
from rbi.agents.fixers.position_size import fix_position_size
from rbi.agents.fixers.position_stops import fix_position_stops
from rbi.agents.fixers.ta_lib import fix_pandas_ta
from rbi.agents.fixers.unused_imports import fix_unused_imports

__all__ = [
    "Fix",
    "FixResult",
    "diagnose_no_trades",
    "fix_array_series",
    "fix_column_names",
    "fix_data_df",
    "fix_entry_price",
    "fix_for_failure",
    "fix_freq_alias",
    "fix_index_column",
    "fix_indicator_shape",
    "fix_lib_helpers",
    "fix_lowercase_columns",
    "fix_pandas_ta",
    "fix_pandas_ta_series",
    "fix_position_size",
    "fix_position_stops",
    "fix_unused_imports",
    "modern_freq",
    "package",
]


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
    return _run(code, (fix_lib_helpers, fix_freq_alias, fix_unused_imports))


_SIZE_MESSAGE = "size must be a positive fraction"
_QUOTED = re.compile(r"""['"]([A-Za-z_ ]+)['"]""")
# The key of `KeyError: 'datetime'` or `KeyError: "None of ['datetime'] are in the columns"`.
_MISSING_KEY = re.compile(r"""KeyError: (?:"None of \[)?['"]([^'"\[\]]+)['"]""")


def _fix_indicators(code: str, *, returned_none: bool) -> tuple[str, list[Fix]]:
    """An indicator of the wrong shape: pandas_ta given numpy arrays (it returns None), else reshape the result."""
    if returned_none:
        new, fixes = fix_pandas_ta_series(code)
        if new != code:
            return new, fixes
    return fix_indicator_shape(code)


def _fix_columns(code: str, *, missing: str) -> tuple[str, list[Fix]]:
    """A missing OHLCV column: the code's own lower-casing when it has one, else the CSV's headers."""
    if missing[:1].isupper():
        new, fixes = fix_lowercase_columns(code, backtest=False)
        if new != code or NAMES_HELPER_MARKER in code:  # done now, or on an earlier round
            return new, fixes
    return fix_column_names(code, missing=missing)


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
        if re.search(r"attribute '(sl|tp)'", message):
            fixers.append(fix_position_stops)
    array_attribute = ARRAY_MESSAGE.search(message)
    if array_attribute:
        fixers.append(functools.partial(fix_array_series, attribute=array_attribute.group(1)))
    if "'df'" in message and ("no setter" in message or "can't set attribute" in message):
        fixers.append(fix_data_df)
    if "Indicators must return" in message:
        fixers.append(functools.partial(_fix_indicators, returned_none="returned value: None" in message))
    if BACKTEST_MESSAGE in message:
        fixers.append(lambda c: fix_lowercase_columns(c, backtest=True))
    if "KeyError" in message or "not in data" in message:
        # `KeyError: 'Close'`, `Column 'close' not in data`, `"None of [Index(['Open', ...])] are in the [columns]"`
        quoted = _QUOTED.findall(message)
        missing_key = _MISSING_KEY.search(message)
        if missing_key:
            key = missing_key.group(1)
            fixers.append(lambda c: fix_index_column(c, missing=key))
        columns = [q for q in quoted if _canonical(q)]
        if columns:
            fixers.append(functools.partial(_fix_columns, missing=columns[0]))
    if error_type in ("import_error", "validation_error"):
        if "pandas_ta" in message:
            fixers.append(fix_pandas_ta)
        if "backtesting.lib" in message:
            fixers.append(fix_lib_helpers)
        fixers.append(fix_unused_imports)
    return _run(code, fixers)


