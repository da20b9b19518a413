"""Zero-trade runs: likely causes, most specific first."""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Mapping
from typing import Any

from rbi.agents.fixers._source import _dotted, _number, _parents, _parse, _Source

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
