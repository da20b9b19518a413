"""position_size: sizes that are neither a fraction in (0, 1) nor whole units."""

from __future__ import annotations

import ast
import math
import re

from rbi.agents.fixers._source import Fix, _dotted, _Edit, _insert_helper, _iterate, _number, _parse, _Source

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


