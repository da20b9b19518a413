"""lowercase_columns: the script lower-cased its columns, then backtesting.py (or the script) asks for 'Open'.

backtesting.py needs Open, High, Low, Close, Volume. Scripts often normalise headers with
`df.columns = df.columns.str.strip().str.lower()` and keep using `df['close']`, then pass `df` to
`Backtest` (`ValueError: data must be a pandas.DataFrame with columns 'Open', ...`) or select
`df[['Open', ...]]` (`KeyError: 'Open'`). The frame given to `Backtest(...)`, and the frame in such a
capitalised selection, become `_rbi_ohlcv_names(df)`: a copy with only the OHLCV names capitalised.
The script's own lower-case uses stay as they are.
"""

from __future__ import annotations

import ast

from rbi.agents.fixers._source import Fix, _apply, _dotted, _Edit, _insert_helper, _parse, _Source

BACKTEST_MESSAGE = "must be a pandas.DataFrame with columns"
OHLCV = frozenset({"Open", "High", "Low", "Close", "Volume"})
NAMES_HELPER_MARKER = "def _rbi_ohlcv_names("
NAMES_HELPER = '''\
def _rbi_ohlcv_names(frame):
    """rbi: backtesting.py needs Open, High, Low, Close, Volume; a copy with lower-case OHLCV names capitalised."""
    names = {c: str(c).strip().capitalize() for c in frame.columns
             if str(c).strip().lower() in ("open", "high", "low", "close", "volume")
             and str(c).strip().capitalize() not in frame.columns}
    return frame.rename(columns=names) if names else frame
'''
_WRAP = "_rbi_ohlcv_names"


def _lowered(tree: ast.Module) -> dict[str, int]:
    """Frames whose columns the code lower-cases, with the first line that does it."""
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Attribute) and target.attr == "columns" and isinstance(target.value, ast.Name) \
                    and "lower" in ast.dump(node.value):
                name = target.value.id
            elif isinstance(target, ast.Name) and isinstance(node.value, ast.Call) \
                    and _dotted(node.value.func).endswith(".rename") and "lower" in ast.dump(node.value):
                name = target.id
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) \
                and isinstance(node.value.func, ast.Attribute) and node.value.func.attr == "rename" \
                and isinstance(node.value.func.value, ast.Name) and "lower" in ast.dump(node.value):
            name = node.value.func.value.id
        if name is not None and isinstance(node, ast.stmt):
            found[name] = min(found.get(name, node.lineno), node.lineno)
    return found


def _asks_capitalised(node: ast.Subscript) -> bool:
    keys = node.slice.elts if isinstance(node.slice, ast.List | ast.Tuple) else [node.slice]
    return any(isinstance(k, ast.Constant) and k.value in OHLCV for k in keys)


def _wrapped(node: ast.expr) -> bool:
    return isinstance(node, ast.Call) and _dotted(node.func) == _WRAP


def fix_lowercase_columns(code: str, *, backtest: bool) -> tuple[str, list[Fix]]:
    """`Backtest(df, ...)` (with `backtest`) and `df[['Open', ...]]` after lower-casing -> `_rbi_ohlcv_names(df)`."""
    tree = _parse(code)
    if tree is None:
        return code, []
    source = _Source(code)
    lowered = _lowered(tree)
    edits: list[_Edit] = []
    fixes: list[Fix] = []
    for node in ast.walk(tree):
        if backtest and isinstance(node, ast.Call) and _dotted(node.func).split(".")[-1] == "Backtest":
            data = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "data"), None)
            if data is None or _wrapped(data):
                continue
            edits.append(source.replace(data, f"{_WRAP}({source.text(data)})"))
            fixes.append(Fix("lowercase_columns", node.lineno, f"Backtest({source.text(data)}, ...) -> "
                             f"Backtest({_WRAP}({source.text(data)}), ...): backtesting.py needs capitalised "
                             "Open, High, Low, Close, Volume"))
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and isinstance(node.value, ast.Name) \
                and node.value.id in lowered and node.lineno > lowered[node.value.id] and _asks_capitalised(node):
            name = node.value.id
            edits.append(source.replace(node.value, f"{_WRAP}({name})"))
            fixes.append(Fix("lowercase_columns", node.lineno, f"{name}[...] -> {_WRAP}({name})[...]: the code "
                             "lower-cased its columns above"))
    if not edits:
        return code, []
    return _insert_helper(_apply(code, edits), NAMES_HELPER_MARKER, NAMES_HELPER), sorted(
        fixes, key=lambda f: f.line or 0)
