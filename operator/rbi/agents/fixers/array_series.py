"""array_series: pandas methods called on backtesting.py's arrays (`self.data.Close.iloc[-1]`).

Inside a Strategy, `self.data.Close` and every `self.I(...)` indicator are `_Array`s (numpy arrays), not
pandas Series, so `.iloc`, `.shift`, `.rolling`, `.pct_change` ... raise `AttributeError: '_Array' object has
no attribute 'iloc'`. backtesting.py gives each such array its Series as `.s` (same values, the data's
index), which is what the author meant: `self.data.Close.iloc[-1]` becomes `self.data.Close.s.iloc[-1]`.
Only receivers that are backtesting arrays are rewritten (a data column, or an attribute the class
assigns from `self.I(...)`), and only for names that pandas Series have and numpy arrays lack.
"""

from __future__ import annotations

import ast
import re

import numpy as np
import pandas as pd

from rbi.agents.fixers._source import Fix, _apply, _Edit, _parse, _Source

MESSAGE = re.compile(r"'_(?:Array|Indicator)' object has no attribute '(\w+)'")


def _series_only(name: str) -> bool:
    return hasattr(pd.Series, name) and not hasattr(np.ndarray, name) and not name.startswith("_")


def _indicator_names(tree: ast.Module) -> set[str]:
    """Attributes assigned from `self.I(...)` (also tuple targets: `self.upper, self.lower = self.I(...)`)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
            continue
        func = node.value.func
        if not (isinstance(func, ast.Attribute) and func.attr == "I"):
            continue
        for target in node.targets:
            elements = target.elts if isinstance(target, ast.Tuple) else [target]
            names.update(e.attr for e in elements if isinstance(e, ast.Attribute)
                         and isinstance(e.value, ast.Name) and e.value.id == "self")
    return names


def _is_backtesting_array(node: ast.expr, indicators: set[str]) -> bool:
    if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute | ast.Name)):
        return False
    owner = node.value
    if isinstance(owner, ast.Attribute):  # self.data.Close, but not self.data.df (a real DataFrame)
        return owner.attr == "data" and isinstance(owner.value, ast.Name) and owner.value.id == "self" \
            and node.attr not in ("df", "index", "pip")
    return owner.id == "self" and node.attr in indicators  # self.rsi


def fix_array_series(code: str, *, attribute: str) -> tuple[str, list[Fix]]:
    """`<array>.<attribute>` -> `<array>.s.<attribute>` for every backtesting array in the code."""
    tree = _parse(code)
    if tree is None or not _series_only(attribute):
        return code, []
    source = _Source(code)
    indicators = _indicator_names(tree)
    edits: list[_Edit] = []
    fixes: list[Fix] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == attribute and _is_backtesting_array(node.value,
                                                                                             indicators):
            receiver = source.text(node.value)
            edits.append(source.replace(node, f"{receiver}.s.{attribute}"))
            fixes.append(Fix("array_series", node.lineno, f"{receiver}.{attribute} -> {receiver}.s.{attribute}: "
                             "backtesting.py arrays are numpy arrays; .s is their pandas Series"))
    return _apply(code, edits), sorted(fixes, key=lambda f: f.line or 0)
