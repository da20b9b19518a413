"""freq_alias: pandas 3 frequency aliases ('1H' is gone, '1h' is right)."""

from __future__ import annotations

import ast
import re
import warnings
from collections.abc import Iterable

from rbi.agents.fixers._source import Fix, _Edit, _iterate, _parse, _Source

# --------------------------------------------------------------------------- freq_alias

# Calls whose first positional argument is a frequency or offset string.
_FREQ_FIRST_ARG = frozenset({"resample", "asfreq", "to_offset", "resample_apply", "floor", "ceil", "round", "rolling"})
_FREQ_KEYWORDS = frozenset({"freq", "rule"})
_UNIT_MAP = {
    "H": "h", "BH": "bh", "CBH": "cbh", "T": "min", "MIN": "min", "Min": "min", "S": "s", "L": "ms", "U": "us",
    "N": "ns", "M": "ME", "BM": "BME", "SM": "SME", "CBM": "CBME", "Q": "QE", "BQ": "BQE", "A": "YE", "Y": "YE",
    "BA": "BYE", "BY": "BYE", "AS": "YS", "BAS": "BYS", "SEC": "s", "Sec": "s", "MS": "MS",
}  # fmt: skip
_FREQ_RE = re.compile(r"(\s*)(\d*)(\s*)([A-Za-z]+)((?:-[A-Za-z]{3})?)(\s*)")


def _offset_ok(alias: str) -> bool:
    from pandas.tseries.frequencies import to_offset

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            to_offset(alias)
    except (ValueError, TypeError):
        return False
    return True


def modern_freq(alias: str) -> str | None:
    """The pandas 3 spelling of an alias the installed pandas rejects, or None when none is needed."""
    if _offset_ok(alias):
        return None
    match = _FREQ_RE.fullmatch(alias)
    if not match:
        return None
    lead, number, gap, unit, anchor, trail = match.groups()
    mapped = _UNIT_MAP.get(unit) or _UNIT_MAP.get(unit.upper())
    if mapped is None and unit.lower() in ("min", "h", "s", "ms", "us", "ns"):
        mapped = unit.lower()
    if mapped is None:
        return None
    new = f"{lead}{number}{gap}{mapped}{anchor}{trail}"
    return new if _offset_ok(new) else None


def _freq_strings(tree: ast.AST) -> Iterable[ast.Constant]:
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        candidates: list[ast.expr] = [k.value for k in node.keywords if k.arg in _FREQ_KEYWORDS]
        if name in _FREQ_FIRST_ARG and node.args:
            candidates.append(node.args[0])
        for value in candidates:
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                yield value


def _freq_step(code: str) -> tuple[list[_Edit], list[Fix]]:
    tree = _parse(code)
    if tree is None:
        return [], []
    source = _Source(code)
    edits: list[_Edit] = []
    fixes: list[Fix] = []
    for constant in _freq_strings(tree):
        old = str(constant.value)
        new = modern_freq(old)
        if new is None:
            continue
        literal = source.text(constant)
        quote = literal[-1] if literal and literal[-1] in "'\"" else "'"
        prefix = literal[: len(literal) - len(literal.lstrip("rRuU"))]
        edits.append(source.replace(constant, f"{prefix}{quote}{new}{quote}"))
        fixes.append(Fix("freq_alias", constant.lineno,
                         f"frequency {old!r} is not accepted by pandas 3; it is spelled {new!r}"))
    return edits, fixes


def fix_freq_alias(code: str) -> tuple[str, list[Fix]]:
    """Rewrite frequency strings passed to resample/asfreq/date_range/freq=/... into pandas 3 aliases."""
    return _iterate(code, _freq_step, passes=1)


