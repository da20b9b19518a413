"""indicator_shape: indicator functions that return a DataFrame, a list, a dict or the wrong length.

`Strategy.I` needs (a tuple of) arrays exactly as long as the data. Generated indicators often return
a Series after `dropna()`, an array trimmed by its warm-up (`rsi[n:]`), a dict of bands, a ragged
list, or a `(n, k)` stack. Each `self.I(func, ...)` whose function is not TA-Lib's becomes
`self.I(_rbi_indicator(func, self.data), ...)`: the wrapper changes no value, it only reshapes. A
pandas result is aligned on the data's index; a shorter array is aligned to the last bar (its
warm-up is what is missing) and padded with NaN in front. Results that are already right pass
through untouched, so wrapping is safe for every indicator in the file.
"""

from __future__ import annotations

import ast

from rbi.agents.fixers._source import Fix, _apply, _dotted, _Edit, _insert_helper, _parse, _Source

MESSAGE = "Indicators must return"
INDICATOR_HELPER_MARKER = "def _rbi_indicator("
INDICATOR_HELPER = '''\
def _rbi_indicator(func, data):
    """rbi: reshape an indicator's result to what Strategy.I needs, without changing a value.

    pandas results are aligned on the data's index; a shorter array is aligned to the last bar
    (NaN for the missing warm-up); dicts and ragged lists become one array per entry.
    """
    import functools

    import numpy as np
    import pandas as pd

    length, index = len(data), data.index

    def column(value):
        if isinstance(value, pd.Series | pd.DataFrame) and not value.index.equals(index) \\
                and value.index.isin(index).all():
            value = value.reindex(index)
        array = np.asarray(value)
        if array.dtype == object:
            array = array.astype(float)
        if array.ndim == 0:
            return np.full(length, array[()])
        if array.ndim == 2 and array.shape[0] != length and array.shape[1] == length:
            array = array.T
        if 0 < array.shape[0] < length:
            pad = np.full((length - array.shape[0],) + array.shape[1:], np.nan)
            array = np.concatenate([pad, array.astype(float)])
        return array

    def acceptable(value):
        if isinstance(value, pd.DataFrame):
            return len(value) == length
        try:
            array = np.asarray(value)
        except ValueError:  # ragged
            return False
        return array.dtype != object and 1 <= array.ndim <= 2 and length in (array.shape[0], array.shape[-1])

    @functools.wraps(func)
    def wrapped(*args, **kwargs):
        value = func(*args, **kwargs)
        if value is None or acceptable(value):
            return value
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, pd.DataFrame):
            return tuple(column(value[name]) for name in value.columns)
        if isinstance(value, list | tuple) and value and all(np.ndim(v) >= 1 for v in value):
            return tuple(column(v) for v in value)
        array = column(value)
        return tuple(array.T) if array.ndim == 2 else array

    return wrapped
'''


def _is_talib(func: ast.expr) -> bool:
    return _dotted(func).split(".")[0] == "talib"


def fix_indicator_shape(code: str) -> tuple[str, list[Fix]]:
    """`self.I(func, ...)` -> `self.I(_rbi_indicator(func, self.data), ...)` for every non-TA-Lib func."""
    tree = _parse(code)
    if tree is None:
        return code, []
    source = _Source(code)
    edits: list[_Edit] = []
    fixes: list[Fix] = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "I"
                and node.args):
            continue
        func = node.args[0]
        if _is_talib(func) or (isinstance(func, ast.Call) and _dotted(func.func) == "_rbi_indicator"):
            continue
        owner = source.text(node.func.value)
        edits.append(source.replace(func, f"_rbi_indicator({source.text(func)}, {owner}.data)"))
        fixes.append(Fix("indicator_shape", func.lineno,
                         f"{owner}.I({source.text(func)[:40]}, ...): its result reshaped to arrays as long as the "
                         "data (values unchanged)"))
    if not edits:
        return code, []
    return _insert_helper(_apply(code, edits), INDICATOR_HELPER_MARKER, INDICATOR_HELPER), fixes
