"""data_df: `self.data.df = ...` has no setter; keep the frame on the strategy instead.

backtesting.py's `_Data.df` is read-only (the broker trades the data the Backtest was given, whatever
the strategy does). The assignment becomes `self._rbi_df = ...`, and every later read of
`self.data.df` in the class becomes `self._rbi_df.iloc[:len(self.data)]`: the frame the author built,
cut to the bars seen so far, just as `self.data.df` is inside `next()`.
"""

from __future__ import annotations

import ast

from rbi.agents.fixers._source import Fix, _apply, _Edit, _parents, _parse, _Source

STORE = "_rbi_df"


def _data_df(node: ast.AST) -> str | None:
    """`X.data.df` -> "X"."""
    if isinstance(node, ast.Attribute) and node.attr == "df" and isinstance(node.value, ast.Attribute) \
            and node.value.attr == "data" and isinstance(node.value.value, ast.Name):
        return node.value.value.id
    return None


def _enclosing(node: ast.AST, parents: dict[ast.AST, ast.AST], kind: type | tuple[type, ...]) -> ast.AST | None:
    scope = parents.get(node)
    while scope is not None and not isinstance(scope, kind):
        scope = parents.get(scope)
    return scope


def fix_data_df(code: str) -> tuple[str, list[Fix]]:
    """`self.data.df = frame` -> `self._rbi_df = frame`; later `self.data.df` reads -> that frame, cut to now."""
    tree = _parse(code)
    if tree is None:
        return code, []
    source = _Source(code)
    parents = _parents(tree)
    edits: list[_Edit] = []
    fixes: list[Fix] = []
    # (class, the assigning function, first line of the assignment) per assignment
    stores: list[tuple[ast.AST | None, ast.AST | None, int]] = []
    for node in ast.walk(tree):
        owner = _data_df(node)
        if owner is None or not isinstance(node, ast.Attribute) or not isinstance(node.ctx, ast.Store):
            continue
        edits.append(source.replace(node, f"{owner}.{STORE}"))
        stores.append((_enclosing(node, parents, ast.ClassDef),
                       _enclosing(node, parents, (ast.FunctionDef, ast.AsyncFunctionDef)), node.lineno))
        fixes.append(Fix("data_df", node.lineno, f"{source.text(node)} = ... -> {owner}.{STORE} = ...: "
                         "backtesting.py's data.df has no setter"))
    if not stores:
        return code, []
    for node in ast.walk(tree):
        owner = _data_df(node)
        if owner is None or not isinstance(node, ast.Attribute) or not isinstance(node.ctx, ast.Load):
            continue
        cls = _enclosing(node, parents, ast.ClassDef)
        function = _enclosing(node, parents, (ast.FunctionDef, ast.AsyncFunctionDef))
        # Reads before the assignment in the same function (often `df = self.data.df.copy()`) keep the original.
        if not any(cls is c and (function is not f or node.lineno > line) for c, f, line in stores):
            continue
        edits.append(source.replace(node, f"{owner}.{STORE}.iloc[:len({owner}.data)]"))
        fixes.append(Fix("data_df", node.lineno, f"{source.text(node)} -> {owner}.{STORE}.iloc[:len({owner}.data)] "
                         "(the frame assigned above, up to the current bar)"))
    return _apply(code, edits), sorted(fixes, key=lambda f: f.line or 0)
