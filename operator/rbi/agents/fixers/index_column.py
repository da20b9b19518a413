"""index_column: `KeyError: 'datetime'` after `read_csv(..., index_col='datetime')` consumed the column.

Generated scripts read the CSV with `index_col='datetime', parse_dates=['datetime']` and then, as if
they had not, convert and set the column themselves: `df['datetime'] = pd.to_datetime(df['datetime'])`,
`df.set_index('datetime')`. The column is the index by then. Reads of it are served from the index
(`df.index.to_series()`, the same values on the same index), and `set_index` of it while it is
still the index becomes `rename_axis` (the frame it would have produced).
"""

from __future__ import annotations

import ast

from rbi.agents.fixers._source import Fix, _apply, _dotted, _Edit, _parse, _Source


def _constant_strings(node: ast.expr | None) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.List | ast.Tuple):
        return [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return []


def _consumes(call: ast.Call, column: str) -> bool:
    """True when this read_csv/read_parquet call makes `column` the index."""
    keywords = {k.arg: k.value for k in call.keywords if k.arg}
    index_col = keywords.get("index_col")
    if index_col is None:
        return False
    if column in _constant_strings(index_col):
        return True
    first = isinstance(index_col, ast.Constant) and index_col.value == 0
    return first and column in _constant_strings(keywords.get("parse_dates"))


def _frames(tree: ast.Module, column: str) -> dict[str, int]:
    """Names assigned from a read that consumed `column`, with the line of that read."""
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and isinstance(node.value, ast.Call) and _dotted(node.value.func).split(".")[-1].startswith("read_") \
                and _consumes(node.value, column):
            found.setdefault(node.targets[0].id, node.lineno)
    return found


def _column_key(node: ast.Subscript) -> str | None:
    value = node.slice
    return value.value if isinstance(value, ast.Constant) and isinstance(value.value, str) else None


def fix_index_column(code: str, *, missing: str) -> tuple[str, list[Fix]]:
    """Reads of a column that `index_col=` already made the index are served from the index."""
    tree = _parse(code)
    if tree is None:
        return code, []
    frames = _frames(tree, missing)
    if not frames:
        return code, []
    source = _Source(code)
    edits: list[_Edit] = []
    fixes: list[Fix] = []
    # Where the script puts the column back (df['datetime'] = ...): from then on it is a column again.
    restored = {name: min((n.lineno for n in ast.walk(tree) if isinstance(n, ast.Subscript)
                           and isinstance(n.ctx, ast.Store) and _dotted(n.value) == name
                           and _column_key(n) == missing), default=None) for name in frames}
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and isinstance(node.value, ast.Name) \
                and node.value.id in frames and _column_key(node) == missing and node.lineno > frames[node.value.id]:
            back = restored[node.value.id]
            if back is not None and node.lineno > back:
                continue
            new = f"{node.value.id}.index.to_series()"
            edits.append(source.replace(node, new))
            fixes.append(Fix("index_column", node.lineno, f"{source.text(node)} -> {new}: index_col={missing!r} "
                             "already made the column the index"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "set_index" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id in frames and node.args \
                and _constant_strings(node.args[0]) == [missing]:
            back = restored[node.func.value.id]
            if back is not None and node.lineno > back:
                continue
            inplace = [k for k in node.keywords if k.arg == "inplace"]
            tail = f", inplace={source.text(inplace[0].value)}" if inplace else ""
            new = f"{node.func.value.id}.rename_axis({missing!r}{tail})"
            edits.append(source.replace(node, new))
            fixes.append(Fix("index_column", node.lineno, f"{source.text(node.func)}({missing!r}) -> rename_axis: "
                             f"index_col={missing!r} already made the column the index"))
    return _apply(code, edits), sorted(fixes, key=lambda f: f.line or 0)
