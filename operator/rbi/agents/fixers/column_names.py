"""column_names: lower-case or padded OHLCV column names."""

from __future__ import annotations

import ast

from rbi.agents.fixers._source import Fix, _apply, _dotted, _Edit, _iterate, _parse, _Source

# --------------------------------------------------------------------------- column_names

OHLCV = ("Open", "High", "Low", "Close", "Volume")
_OHLCV_BY_KEY = {c.lower(): c for c in OHLCV}
NORMALISE_MARKER = "# rbi: normalise column names"


def _canonical(name: str) -> str | None:
    return _OHLCV_BY_KEY.get(name.strip().lower())


def _data_column_step(code: str) -> tuple[list[_Edit], list[Fix]]:
    tree = _parse(code)
    if tree is None:
        return [], []
    source = _Source(code)
    edits: list[_Edit] = []
    fixes: list[Fix] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "data" \
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self":
            right = _canonical(node.attr)
            if right and right != node.attr:
                end = source.offset(node.end_lineno or node.lineno, node.end_col_offset or 0)
                edits.append(_Edit(end - len(node.attr), end, right))
                fixes.append(Fix("column_names", node.lineno,
                                 f"self.data.{node.attr} -> self.data.{right}: backtesting.py names the columns "
                                 "Open, High, Low, Close, Volume"))
        elif isinstance(node, ast.Subscript) and _dotted(node.value) in ("self.data", "self.data.df") \
                and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            right = _canonical(node.slice.value)
            if right and right != node.slice.value:
                edits.append(source.replace(node.slice, repr(right)))
                owner = _dotted(node.value)
                fixes.append(Fix("column_names", node.lineno,
                                 f"{owner}[{node.slice.value!r}] -> {owner}[{right!r}]"))
    return edits, fixes


def _normalise_line(target: str, capitalise: bool) -> str:
    case = "capitalize" if capitalise else "lower"
    return (f"{target} = {target}.rename(columns=lambda c: str(c).strip().{case}() if str(c).strip().lower() in "
            f"('open', 'high', 'low', 'close', 'volume') else str(c).strip())"
            f".loc[:, lambda d: ~d.columns.astype(str).str.startswith('Unnamed')]  {NORMALISE_MARKER}")


def _script_columns(code: str, capitalise: bool) -> tuple[str, list[Fix]]:
    tree = _parse(code)
    if tree is None:
        return code, []
    source = _Source(code)
    edits: list[_Edit] = []
    fixes: list[Fix] = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Call) and _dotted(node.value.func).endswith("read_csv")):
            continue
        end_line = node.end_lineno or node.lineno
        following = source.lines[end_line] if end_line < len(source.lines) else ""
        if NORMALISE_MARKER in following:
            continue
        target = node.targets[0].id
        line = source.indent(node.lineno) + _normalise_line(target, capitalise) + "\n"
        position = source.line_start(end_line + 1)
        prefix_newline = "" if code[:position].endswith("\n") else "\n"
        edits.append(_Edit(position, position, prefix_newline + line))
        fixes.append(Fix("column_names", end_line + 1,
                         f"after reading {target} from CSV, strip the headers, "
                         f"{'capitalise' if capitalise else 'lower'} the OHLCV names and drop 'Unnamed' columns "
                         "(the CSV has ' open'-style headers and a trailing comma)"))
    return _apply(code, edits), fixes


def fix_column_names(code: str, *, missing: str | None = None) -> tuple[str, list[Fix]]:
    """`self.data.close` -> `self.data.Close`; with `missing` (a KeyError's column), normalise CSV reads too."""
    code, fixes = _iterate(code, _data_column_step, passes=1)
    if missing is not None and _canonical(missing):
        code, more = _script_columns(code, capitalise=missing.strip()[:1].isupper())
        fixes.extend(more)
    return code, fixes


