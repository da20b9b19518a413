"""pandas_ta_series: pandas_ta needs pandas Series; `self.data.Close` is a numpy array, so it returns None.

`self.I(ta.rsi, self.data.Close, length=14)` is what generated code writes; pandas_ta (and
pandas-ta-classic) quietly return None for a numpy array, and backtesting.py then fails with
`Indicators must return ... returned value: None`. Each `self.data.<column>` passed to a pandas_ta
function (directly, or through `self.I(ta.f, ...)`) becomes `self.data.<column>.s`, the same values
as a Series on the data's index.
"""

from __future__ import annotations

import ast

from rbi.agents.fixers._source import Fix, _apply, _Edit, _parse, _Source

_COLUMNS = frozenset({"Open", "High", "Low", "Close", "Volume"})


def _aliases(tree: ast.Module) -> set[str]:
    """Names the code gives pandas_ta (`import pandas_ta as ta`) and the functions it imports from it."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.asname or a.name for a in node.names if a.name.split(".")[0] in ("pandas_ta",
                                                                                           "pandas_ta_classic"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in (
                "pandas_ta", "pandas_ta_classic"):
            names.update(a.asname or a.name for a in node.names)
    return names


def _is_ta(func: ast.expr, aliases: set[str]) -> bool:
    if isinstance(func, ast.Name):
        return func.id in aliases
    return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in aliases


def _column(node: ast.expr) -> bool:
    """`X.data.Close` (a numpy array in backtesting.py)."""
    return isinstance(node, ast.Attribute) and node.attr in _COLUMNS and isinstance(node.value, ast.Attribute) \
        and node.value.attr == "data"


def fix_pandas_ta_series(code: str) -> tuple[str, list[Fix]]:
    """`ta.f(self.data.Close, ...)` and `self.I(ta.f, self.data.Close, ...)` -> `self.data.Close.s`."""
    tree = _parse(code)
    if tree is None:
        return code, []
    aliases = _aliases(tree)
    if not aliases:
        return code, []
    source = _Source(code)
    edits: list[_Edit] = []
    fixes: list[Fix] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        if _is_ta(node.func, aliases):
            arguments = [*node.args, *(k.value for k in node.keywords)]
        elif isinstance(node.func, ast.Attribute) and node.func.attr == "I" and node.args \
                and _is_ta(node.args[0], aliases):
            arguments = [*node.args[1:], *(k.value for k in node.keywords)]
        else:
            continue
        for argument in arguments:
            if _column(argument):
                edits.append(source.replace(argument, source.text(argument) + ".s"))
                fixes.append(Fix("pandas_ta_series", argument.lineno,
                                 f"{source.text(argument)} -> {source.text(argument)}.s: pandas_ta needs a pandas "
                                 "Series (it returns None for a numpy array)"))
    return _apply(code, edits), fixes
