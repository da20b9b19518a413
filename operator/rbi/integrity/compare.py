"""The strategy's own figures against the host's recomputation: equal up to rounding, or named.

The report's statistics come from the sandbox and are never used; they are compared so that a
forgery is reported as what it is (the first statistic that disagrees), not silently repaired.
"""

from __future__ import annotations

import math
from typing import Any

# Float noise from summing in another order stays far below this; a forged figure does not.
RELATIVE_TOLERANCE = 1e-6
ABSOLUTE_TOLERANCE = 1e-6


def _same(reported: Any, recomputed: Any) -> bool:
    if recomputed is None or reported is None:
        return reported is None and recomputed is None
    if isinstance(recomputed, bool) or isinstance(reported, bool):
        return reported is recomputed
    if isinstance(recomputed, int | float) and isinstance(reported, int | float):
        return math.isclose(float(reported), float(recomputed), rel_tol=RELATIVE_TOLERANCE,
                            abs_tol=ABSOLUTE_TOLERANCE)
    return bool(reported == recomputed)


def first_disagreement(reported: Any, recomputed: dict[str, Any], *, equity_final: float | None) -> str | None:
    """None when the report agrees with the recomputation; else a sentence naming the first difference.

    `reported` is None where the runner left the statistics to the host (class mode): then the
    broker's final equity is what is compared, and it must be there.
    """
    if reported is not None and not isinstance(reported, dict):
        return "the run reported no statistics object"
    if reported is None and equity_final is None:
        return "the run reported neither statistics nor the broker's final equity"
    if equity_final is not None and not _same(equity_final, recomputed.get("equity_final")):
        return (f"the broker's final equity was {equity_final:.10g}, but its trades on the served data give "
                f"{recomputed.get('equity_final')!r}")
    if reported is None:
        return None
    for key, value in recomputed.items():
        if key not in reported:
            return f"{key}: missing from the report (recomputed {value!r})"
        if not _same(reported[key], value):
            return f"{key}: reported {str(reported[key])[:40]}, recomputed {value!r}"
    extra = sorted(set(reported) - set(recomputed))
    if extra:
        return f"{extra[0]}: reported, but backtesting.py gives no such statistic for this run"
    return None
