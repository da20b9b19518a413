"""lib_helpers: backtesting.lib helpers that 0.6.6 does not have."""

from __future__ import annotations

import ast

from rbi.agents.fixers._source import Fix, _apply, _Edit, _parse, _Source

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


