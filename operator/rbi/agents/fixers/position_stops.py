"""position_stops: `self.position.sl` / `.tp` do not exist; stop-loss and take-profit live on trades and orders.

backtesting.py's Position has no sl/tp: reading one raises AttributeError, and assigning one only sets
a stray attribute that nothing reads. What the author meant lives on each open Trade (a writable
`sl`/`tp`) and on each entry order not yet filled (its `sl`/`tp` become the trade's when it fills).
Writes become `_rbi_set_stop(self, "sl", value)` (every open trade and pending entry order); reads
become `_rbi_get_stop(self, "sl")` (the latest open trade's, None when flat).
"""

from __future__ import annotations

import ast

from rbi.agents.fixers._source import Fix, _apply, _Edit, _insert_helper, _parse, _Source

STOPS = ("sl", "tp")
STOP_HELPERS_MARKER = "def _rbi_set_stop("
STOP_HELPERS = '''\
def _rbi_set_stop(strategy, name, price):
    """rbi: Position has no sl/tp; set it on every open trade and on every entry order not yet filled."""
    for trade in strategy.trades:
        setattr(trade, name, price)
    for order in strategy.orders:
        if not order.is_contingent:
            order._replace(**{name + "_price": price})


def _rbi_get_stop(strategy, name):
    """rbi: Position has no sl/tp; the latest open trade's (None while flat)."""
    return getattr(strategy.trades[-1], name) if strategy.trades else None
'''


def _position_stop(node: ast.AST) -> tuple[ast.expr, str] | None:
    """`X.position.sl` -> (X, "sl")."""
    if isinstance(node, ast.Attribute) and node.attr in STOPS and isinstance(node.value, ast.Attribute) \
            and node.value.attr == "position":
        return node.value.value, node.attr
    return None


def fix_position_stops(code: str) -> tuple[str, list[Fix]]:
    """`self.position.sl = v` -> `_rbi_set_stop(self, "sl", v)`; `self.position.sl` -> `_rbi_get_stop(self, "sl")`."""
    tree = _parse(code)
    if tree is None:
        return code, []
    source = _Source(code)
    edits: list[_Edit] = []
    fixes: list[Fix] = []
    written: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and _position_stop(node.targets[0]):
            owner, name = _position_stop(node.targets[0])  # type: ignore[misc]
            value = node.value
            # Reads inside the value are rewritten too: the whole statement is rebuilt from its parts.
            inner = _rewrite_reads(source, value)
            edits.append(source.replace(node, f'_rbi_set_stop({source.text(owner)}, "{name}", {inner})'))
            written.add(id(node.targets[0]))
            fixes.append(Fix("position_stops", node.lineno,
                             f"{source.text(node.targets[0])} = ... -> _rbi_set_stop(...): Position has no {name}; "
                             f"set on each open trade and pending entry order"))
    for node in ast.walk(tree):
        found = _position_stop(node)
        if found is None or id(node) in written or not isinstance(node, ast.Attribute) \
                or not isinstance(node.ctx, ast.Load):
            continue
        if any(e.start <= source.span(node)[0] < e.end for e in edits):
            continue  # inside a rewritten assignment: done there
        owner, name = found
        edits.append(source.replace(node, f'_rbi_get_stop({source.text(owner)}, "{name}")'))
        fixes.append(Fix("position_stops", node.lineno,
                         f"{source.text(node)} -> _rbi_get_stop(...): Position has no {name}; "
                         "read from the latest open trade"))
    if not edits:
        return code, []
    code = _apply(code, edits)
    return _insert_helper(code, STOP_HELPERS_MARKER, STOP_HELPERS), sorted(fixes, key=lambda f: f.line or 0)


def _rewrite_reads(source: _Source, expression: ast.expr) -> str:
    """The expression's text with every `X.position.sl|tp` read replaced (nested in an assigned value)."""
    start, end = source.span(expression)
    edits = []
    for node in ast.walk(expression):
        found = _position_stop(node)
        if found is not None:
            node_start, node_end = source.span(node)
            edits.append(_Edit(node_start - start, node_end - start,
                               f'_rbi_get_stop({source.text(found[0])}, "{found[1]}")'))
    return _apply(source.code[start:end], edits)
