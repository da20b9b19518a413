"""Runtime facts that explain a run's trade count, collected in the sandbox next to the backtest.

A zero-trade run is not a failure, but its user wants to know why, and the answer is in facts
only the run has: how often the strategy called buy()/sell(), how many orders the broker
cancelled for want of cash or margin, and which indicators stayed NaN. `Probe` gathers them
(`install()` before the code runs, `report(stats)` after it, `uninstall()` always) and the runner
puts the result under `report["diagnostics"]`.

Everything here runs beside untrusted code, so the host treats the result as untrusted too:
`clean()` is the host's bounded, schema-checked reading of it (rbi.classify).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping
from typing import Any

VERSION = 1
MAX_INDICATORS = 30
MAX_NAME = 80
MAX_COUNT = 10**9
_MARGIN_WORDS = "insufficient margin"


class _CountingWarnings:
    """Stands in for the `warnings` module inside backtesting.backtesting: counts the broker's
    insufficient-margin cancellations, then warns exactly as before (same location, same filters)."""

    def __init__(self, real: Any, probe: Probe) -> None:
        self._real = real
        self._probe = probe

    def warn(self, message: Any, category: Any = None, stacklevel: int = 1, *args: Any, **kwargs: Any) -> None:
        if _MARGIN_WORDS in str(message):
            self._probe.cancelled += 1
        self._real.warn(message, category, stacklevel + 1, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class Probe:
    """Counts orders and cancellations while strategy code runs; summarises the indicators after."""

    def __init__(self) -> None:
        self.buy_calls = 0
        self.sell_calls = 0
        self.sizes: list[float] = []
        self.cancelled = 0
        self._restore: list[tuple[Any, str, Any]] = []

    @classmethod
    def installed(cls) -> Probe:
        probe = cls()
        probe.install()
        return probe

    def install(self) -> None:
        try:
            import backtesting.backtesting as engine
        except ImportError:  # pragma: no cover - backtesting is always there in the sandbox
            return
        probe = self
        buy, sell = engine.Strategy.buy, engine.Strategy.sell

        def counted_buy(strategy: Any, *args: Any, **kwargs: Any) -> Any:
            probe.buy_calls += 1
            probe._size(kwargs.get("size"))
            return buy(strategy, *args, **kwargs)

        def counted_sell(strategy: Any, *args: Any, **kwargs: Any) -> Any:
            probe.sell_calls += 1
            probe._size(kwargs.get("size"))
            return sell(strategy, *args, **kwargs)

        for owner, name, replacement in ((engine.Strategy, "buy", counted_buy),
                                         (engine.Strategy, "sell", counted_sell),
                                         (engine, "warnings", _CountingWarnings(warnings, self))):
            self._restore.append((owner, name, getattr(owner, name)))
            setattr(owner, name, replacement)

    def uninstall(self) -> None:
        for owner, name, original in reversed(self._restore):
            setattr(owner, name, original)
        self._restore.clear()

    def _size(self, size: Any) -> None:
        if len(self.sizes) < 1000 and isinstance(size, int | float) and not isinstance(size, bool):
            self.sizes.append(float(size))

    def report(self, stats: Any) -> dict[str, Any] | None:
        """The facts for the run that produced `stats` (backtesting's result); None if it has none."""
        try:
            return self._report(stats)
        except Exception:  # a strategy can leave anything behind; diagnostics must never fail a run
            return None

    def _report(self, stats: Any) -> dict[str, Any] | None:
        import numpy as np

        strategy = getattr(stats, "_strategy", None)
        if strategy is None or isinstance(strategy, type):
            return None
        data = strategy.data
        bars = len(data.df) if hasattr(data, "df") else len(data)
        indicators = []
        for indicator in list(getattr(strategy, "_indicators", []))[:MAX_INDICATORS]:
            values = np.asarray(indicator, dtype=float)
            rows = np.atleast_2d(values)
            missing = np.isnan(rows)
            any_missing = missing.any(axis=0)
            warmup = int(any_missing.argmin()) if not any_missing.all() else rows.shape[-1]
            indicators.append({"name": str(getattr(indicator, "name", "") or "")[:MAX_NAME],
                               "nan": float(missing.mean()) if missing.size else 0.0,
                               "warmup": warmup})
        trades = getattr(stats, "_trades", None)
        pending = [o for o in getattr(strategy, "orders", []) if not getattr(o, "is_contingent", False)]
        broker = getattr(strategy, "_broker", None)
        closes = np.asarray(data.Close, dtype=float)
        return {
            "v": VERSION,
            "bars": bars,
            "buy_calls": self.buy_calls,
            "sell_calls": self.sell_calls,
            "max_size": max((abs(s) for s in self.sizes), default=None),
            "cancelled_margin": self.cancelled,
            "pending_orders": len(pending),
            "pending_market": sum(1 for o in pending if o.limit is None and o.stop is None),
            "open_trades": len(getattr(strategy, "trades", ())),
            "trades": len(trades) if trades is not None else None,
            "cash": float(getattr(broker, "_cash", math.nan)),
            "min_close": float(np.nanmin(closes)) if closes.size and not np.isnan(closes).all() else None,
            "indicators": indicators,
        }


# --------------------------------------------------------------------------- host side


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_COUNT else None


def _positive(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and 0 <= number < 1e15 else None


def clean(raw: Any) -> dict[str, Any] | None:
    """The host's reading of a run's untrusted diagnostics: known keys, bounded values, or None."""
    if not isinstance(raw, Mapping) or type(raw.get("v")) is not int or raw.get("v") != VERSION:
        return None
    cleaned: dict[str, Any] = {"v": VERSION}
    for key in ("bars", "buy_calls", "sell_calls", "cancelled_margin", "pending_orders", "pending_market",
                "open_trades", "trades"):
        cleaned[key] = _count(raw.get(key))
    for key in ("max_size", "cash", "min_close"):
        cleaned[key] = _positive(raw.get(key))
    indicators = []
    items = raw.get("indicators")
    for item in items[:MAX_INDICATORS] if isinstance(items, list) else []:
        if not isinstance(item, Mapping):
            continue
        nan = _positive(item.get("nan"))
        warmup = _count(item.get("warmup"))
        if nan is None or nan > 1 or warmup is None:
            continue
        name = item.get("name")
        indicators.append({"name": "".join(ch for ch in str(name)[:MAX_NAME] if ch.isprintable()) if name else "",
                           "nan": nan, "warmup": warmup})
    cleaned["indicators"] = indicators
    return cleaned


# Whole numbers in an indicator's name: backtesting.py names it after its call, e.g. `SMA(C,200)`.
_WHOLE = re.compile(r"(?<![\d.])\d+(?![\d.])")


def _names(indicators: list[dict[str, Any]]) -> str:
    shown = [i["name"] or "an indicator" for i in indicators[:2]]
    more = f" and {len(indicators) - 2} more" if len(indicators) > 2 else ""
    return ", ".join(shown) + more


def explain(diagnostics: Mapping[str, Any] | None) -> str:
    """One line on why a run made no trades, from its cleaned diagnostics (pure; no model)."""
    if not diagnostics:
        return "no trades; the run reported no diagnostics to say why"
    bars = diagnostics.get("bars") or 0
    calls = (diagnostics.get("buy_calls") or 0) + (diagnostics.get("sell_calls") or 0)
    cancelled = diagnostics.get("cancelled_margin") or 0
    pending = diagnostics.get("pending_orders") or 0
    cash, low, size = diagnostics.get("cash"), diagnostics.get("min_close"), diagnostics.get("max_size")
    indicators = list(diagnostics.get("indicators") or [])
    if cancelled:
        share = f"all {cancelled}" if cancelled >= calls else f"{cancelled} of {calls}"
        money = f" of {cash:,.0f}" if cash else ""
        if size is not None and size >= 1:
            price = f" at {low:,.2f} or more each" if low else ""
            return (f"{share} orders were cancelled for insufficient cash: size={size:g} asks for whole "
                    f"units{price}, more than the cash{money}; use a fraction of equity such as size=0.5")
        price = f" at {low:,.2f}" if low else ""
        return (f"{share} orders were cancelled for insufficient cash: the cash{money} buys less than one "
                f"whole unit{price}, and backtesting.py trades whole units; raise cash or trade smaller units")
    if calls == 0:
        empty = [i for i in indicators if i["nan"] >= 0.999]
        short = [i for i in empty if max(map(int, _WHOLE.findall(i["name"])), default=0) >= bars]
        if short:
            window = max(map(int, _WHOLE.findall(short[0]["name"])))
            return (f"buy() and sell() were never called: the data is too short: {short[0]['name']} needs {window} "
                    f"bars and the data has {bars}, so it is NaN throughout")
        if empty:
            return (f"buy() and sell() were never called: {_names(empty)} is NaN on all {bars} bars (a window "
                    "longer than the data, or NaN inputs), so no condition on it is ever true")
        late = [i for i in indicators if bars and i["warmup"] >= bars - 1]
        if late:
            return (f"buy() and sell() were never called: the data is too short ({bars} bars) for the warm-up "
                    f"of {_names(late)}, so next() never ran")
        mostly = sorted((i for i in indicators if i["nan"] >= 0.5), key=lambda i: -i["nan"])
        if mostly:
            worst = mostly[0]
            return (f"buy() and sell() were never called: {_names(mostly)} is NaN on {worst['nan']:.0%} of the "
                    f"{bars} bars (warm-up {worst['warmup']} bars); the entry conditions were never true together")
        return (f"buy() and sell() were never called: the entry conditions were never true together on the "
                f"{bars} bars")
    if diagnostics.get("open_trades") or (pending and pending == (diagnostics.get("pending_market") or 0)):
        return (f"{calls} orders were placed and none filled: the last came on the final bar, with no bar left "
                "to fill it")
    if pending:
        return (f"{calls} orders were placed and none filled: {pending} still waiting at the end "
                "(their limit or stop prices were never reached)")
    return f"{calls} orders were placed and none filled: each was cancelled or closed out before it became a trade"
