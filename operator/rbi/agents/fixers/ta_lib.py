"""pandas_ta: calls of pandas_ta rewritten to TA-Lib, where pandas_ta cannot be imported.

The sandbox serves `import pandas_ta` from pandas-ta-classic, so this runs only as a repair of an
import error that names pandas_ta (an environment without it), never by default.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping

from rbi.agents.fixers._source import Fix, _apply, _Edit, _insert_helper, _iterate, _parse, _Source

# --------------------------------------------------------------------------- pandas_ta

# pandas_ta name -> (TA-Lib function, keyword renames). Positional order is the same in both libraries.
_TA_SINGLE: dict[str, tuple[str, dict[str, str]]] = {
    "sma": ("SMA", {"length": "timeperiod", "close": "real"}),
    "ema": ("EMA", {"length": "timeperiod", "close": "real"}),
    "wma": ("WMA", {"length": "timeperiod", "close": "real"}),
    "dema": ("DEMA", {"length": "timeperiod", "close": "real"}),
    "tema": ("TEMA", {"length": "timeperiod", "close": "real"}),
    "rsi": ("RSI", {"length": "timeperiod", "close": "real"}),
    "roc": ("ROC", {"length": "timeperiod", "close": "real"}),
    "mom": ("MOM", {"length": "timeperiod", "close": "real"}),
    "atr": ("ATR", {"length": "timeperiod"}),
    "natr": ("NATR", {"length": "timeperiod"}),
    "cci": ("CCI", {"length": "timeperiod"}),
    "willr": ("WILLR", {"length": "timeperiod"}),
    "mfi": ("MFI", {"length": "timeperiod"}),
    "obv": ("OBV", {}),
}
# Multi-output functions: a helper returning pandas_ta's own columns, in pandas_ta's order.
_TA_MULTI = {"macd": "_rbi_ta_macd", "bbands": "_rbi_ta_bbands"}
# pandas_ta keywords with no TA-Lib meaning that can be dropped without changing the values.
_TA_DROPPABLE = frozenset({"append", "talib", "fillna", "fill_method"})
# backtesting.py's own Strategy.I keywords.
_I_KEYWORDS = frozenset({"name", "plot", "overlay", "color", "scatter"})

TA_HELPERS_MARKER = "def _rbi_ta_macd("
TA_HELPERS = '''\
def _rbi_ta_macd(close, fast=12, slow=26, signal=9, **_ignored):
    """rbi: pandas_ta.macd on TA-Lib; same columns and order as pandas_ta (MACD, histogram, signal)."""
    import numpy as np
    import pandas as pd
    import talib
    index = close.index if isinstance(close, pd.Series) else None
    fast, slow, signal = int(fast or 12), int(slow or 26), int(signal or 9)
    macd, macd_signal, hist = talib.MACD(np.asarray(close, dtype=float), fastperiod=fast, slowperiod=slow,
                                         signalperiod=signal)
    tag = f"{fast}_{slow}_{signal}"
    return pd.DataFrame({f"MACD_{tag}": macd, f"MACDh_{tag}": hist, f"MACDs_{tag}": macd_signal}, index=index)


def _rbi_ta_bbands(close, length=5, std=2.0, **_ignored):
    """rbi: pandas_ta.bbands on TA-Lib; same columns and order as pandas_ta (lower, mid, upper, bandwidth, %b)."""
    import numpy as np
    import pandas as pd
    import talib
    index = close.index if isinstance(close, pd.Series) else None
    values = np.asarray(close, dtype=float)
    length, std = int(length or 5), float(std or 2.0)
    upper, mid, lower = talib.BBANDS(values, timeperiod=length, nbdevup=std, nbdevdn=std, matype=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        bandwidth = (upper - lower) / mid * 100.0
        percent = (values - lower) / (upper - lower)
    tag = f"{length}_{std}"
    return pd.DataFrame({f"BBL_{tag}": lower, f"BBM_{tag}": mid, f"BBU_{tag}": upper, f"BBB_{tag}": bandwidth,
                         f"BBP_{tag}": percent}, index=index)
'''


def _pandas_ta_aliases(tree: ast.Module) -> list[tuple[ast.Import, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "pandas_ta":
                    found.append((node, alias.asname or "pandas_ta"))
    return found


def _renamed_call(source: _Source, call: ast.Call, func: str, renames: Mapping[str, str],
                  skip: frozenset[str] = frozenset()) -> tuple[str, list[str]]:
    """The call's text with `func`, renamed keywords and droppable keywords removed."""
    parts = [source.text(a) for a in call.args]
    dropped = []
    for keyword in call.keywords:
        if keyword.arg is None:
            parts.append(source.text(keyword))
        elif keyword.arg in _TA_DROPPABLE and keyword.arg not in skip:
            dropped.append(keyword.arg)
        else:
            name = keyword.arg if keyword.arg in skip else renames.get(keyword.arg, keyword.arg)
            parts.append(f"{name}={source.text(keyword.value)}")
    return f"{func}({', '.join(parts)})", dropped


def _ta_target(node: ast.expr, alias: str) -> str | None:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == alias:
        return node.attr
    return None


def _ta_supported(name: str, call: ast.Call | None, skip: frozenset[str] = frozenset()) -> bool:
    if name in _TA_MULTI:
        return True
    if name not in _TA_SINGLE:
        return False
    if call is None:
        return True
    allowed = set(_TA_SINGLE[name][1]) | _TA_DROPPABLE | skip | {"high", "low", "close", "volume", "real"}
    return all(k.arg is None or k.arg in allowed for k in call.keywords)


def _pandas_ta_step(code: str) -> tuple[list[_Edit], list[Fix]]:
    tree = _parse(code)
    if tree is None:
        return [], []
    source = _Source(code)
    edits: list[_Edit] = []
    fixes: list[Fix] = []
    for _, alias in _pandas_ta_aliases(tree):
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _ta_target(node.func, alias)
            if name is not None and _ta_supported(name, node):
                if name in _TA_MULTI:
                    new = _TA_MULTI[name] + source.text(node)[len(source.text(node.func)):]
                    dropped: list[str] = []
                else:
                    new, dropped = _renamed_call(source, node, "talib." + _TA_SINGLE[name][0], _TA_SINGLE[name][1])
                edits.append(source.replace(node, new))
                note = f"; dropped {', '.join(dropped)}=" if dropped else ""
                fixes.append(Fix("pandas_ta", node.lineno, f"{alias}.{name}(...) -> {new.split('(')[0]}(...){note}"))
            elif node.args and isinstance(node.func, ast.Attribute) and node.func.attr == "I":
                name = _ta_target(node.args[0], alias)
                if name is None or not _ta_supported(name, node, _I_KEYWORDS):
                    continue
                if name in _TA_MULTI:
                    new_func, renames = _TA_MULTI[name], {}
                else:
                    new_func, renames = "talib." + _TA_SINGLE[name][0], _TA_SINGLE[name][1]
                text, dropped = _renamed_call(source, node, source.text(node.func), renames, _I_KEYWORDS)
                first = source.text(node.args[0])
                text = text.replace(first, new_func, 1)
                edits.append(source.replace(node, text))
                note = f"; dropped {', '.join(dropped)}=" if dropped else ""
                fixes.append(Fix("pandas_ta", node.lineno,
                                 f"self.I({alias}.{name}, ...) -> self.I({new_func}, ...){note}"))
    return edits, fixes


def _remaining_ta_uses(tree: ast.Module, alias: str) -> list[ast.Attribute]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
            and n.value.id == alias]


def fix_pandas_ta(code: str) -> tuple[str, list[Fix]]:
    """pandas_ta (when it cannot be imported) -> TA-Lib, with notes for calls that have no mapping."""
    tree = _parse(code)
    if tree is None or not _pandas_ta_aliases(tree):
        return code, []
    code, fixes = _iterate(code, _pandas_ta_step)
    if "_rbi_ta_" in code:
        code = _insert_helper(code, TA_HELPERS_MARKER, TA_HELPERS)
    tree = _parse(code)
    if tree is None:
        return code, fixes
    source = _Source(code)
    has_talib = any(isinstance(n, ast.Import) and any(a.name == "talib" and a.asname is None for a in n.names)
                    for n in tree.body)
    needs_talib = "talib." in code and not has_talib
    edits: list[_Edit] = []
    for node, alias in _pandas_ta_aliases(tree):
        leftover = _remaining_ta_uses(tree, alias)
        for use in leftover:
            fixes.append(Fix("pandas_ta", use.lineno,
                             f"{source.text(use)} has no TA-Lib mapping here; left as is (no pandas_ta)"))
        accessor = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "ta"
                    and not (isinstance(n.value, ast.Name) and n.value.id == alias)]
        for use in accessor:
            fixes.append(Fix("pandas_ta", use.lineno, f"the DataFrame accessor {source.text(use)}.* needs pandas_ta; "
                                                      "not rewritten (use talib on the columns)"))
        if leftover or accessor or len(node.names) != 1:
            if needs_talib:
                indent = source.indent(node.lineno)
                edits.append(_Edit(source.span(node)[1], source.span(node)[1], f"\n{indent}import talib"))
                needs_talib = False
            continue
        replacement = "import talib" if needs_talib else ""
        needs_talib = False
        if replacement:
            edits.append(source.replace(node, replacement))
        else:
            start = source.line_start(node.lineno)
            end = source.line_start((node.end_lineno or node.lineno) + 1)
            edits.append(_Edit(start, end, ""))
        fixes.append(Fix("pandas_ta", node.lineno, "import pandas_ta (not importable) -> "
                         + ("import talib" if replacement else "removed (talib is already imported)")))
    return _apply(code, edits), fixes


