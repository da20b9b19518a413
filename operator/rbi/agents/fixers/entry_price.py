"""entry_price: `Position.entry_price` does not exist; the open trade's does."""

from __future__ import annotations

import ast

from rbi.agents.fixers._source import Fix, _Edit, _iterate, _parents, _parse, _Source

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


