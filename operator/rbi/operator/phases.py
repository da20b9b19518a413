"""The lifecycle of a BacktestStrategy as a state machine on `status.phase`. Pure.

    (new) → Pending ─(slot free, Job created)→ Running ─(Job finished)→ Succeeded | NoTrades | Failed
    spec.idea:      (new) → Generating → Pending → …
    LLM debugging:  Failed (strategy's fault) → Debugging → Pending → …  (up to maxDebugAttempts)
    spec.optimization: Succeeded → Optimizing (trial Jobs, validation Jobs, children) → Succeeded
    an invalid resource: (new) → Failed, reason InvalidSpec, with the precise message
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rbi.outcome import RunOutcome, Status

PENDING = "Pending"
GENERATING = "Generating"
RUNNING = "Running"
DEBUGGING = "Debugging"
OPTIMIZING = "Optimizing"
SUCCEEDED = "Succeeded"
NO_TRADES = "NoTrades"
FAILED = "Failed"
TERMINAL = frozenset({SUCCEEDED, NO_TRADES, FAILED})
ALL = (PENDING, GENERATING, RUNNING, DEBUGGING, OPTIMIZING, SUCCEEDED, NO_TRADES, FAILED)

_ALLOWED: dict[str | None, frozenset[str]] = {
    None: frozenset({PENDING, GENERATING, FAILED}),
    GENERATING: frozenset({PENDING, FAILED, GENERATING}),
    PENDING: frozenset({PENDING, RUNNING, FAILED, SUCCEEDED, NO_TRADES}),
    RUNNING: frozenset({RUNNING, SUCCEEDED, NO_TRADES, FAILED, PENDING}),
    DEBUGGING: frozenset({PENDING, FAILED, DEBUGGING}),
    SUCCEEDED: frozenset({OPTIMIZING, PENDING, GENERATING, FAILED}),
    NO_TRADES: frozenset({PENDING, GENERATING, DEBUGGING, FAILED}),
    FAILED: frozenset({PENDING, GENERATING, DEBUGGING, FAILED}),
    OPTIMIZING: frozenset({OPTIMIZING, SUCCEEDED, PENDING, GENERATING, FAILED}),
}


def can_move(current: str | None, new: str) -> bool:
    return new in _ALLOWED.get(current, frozenset(ALL))


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def phase_of(outcome: RunOutcome) -> str:
    if outcome.status is Status.SUCCEEDED:
        return SUCCEEDED
    if outcome.status is Status.NO_TRADES:
        return NO_TRADES
    return FAILED


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return round(number, 6) if number == number and abs(number) != float("inf") else None


def figures(stats: dict[str, Any]) -> dict[str, Any]:
    """The printer-column figures of a run; undefined values are left out, never NaN."""
    result: dict[str, Any] = {}
    for key, stat in (("returnPct", "return_pct"), ("sharpe", "sharpe_ratio"), ("maxDrawdownPct", "max_drawdown_pct"),
                      ("winRatePct", "win_rate_pct")):
        value = _number(stats.get(stat))
        if value is not None:
            result[key] = value
    trades = stats.get("num_trades")
    if isinstance(trades, int | float) and not isinstance(trades, bool) and trades == trades:
        result["trades"] = int(trades)
    return result


def finished_status(outcome: RunOutcome, *, job: str, run_id: int | None, started: str | None,
                    duration: float | None) -> dict[str, Any]:
    error = outcome.error
    phase = phase_of(outcome)
    status: dict[str, Any] = {
        "phase": phase,
        "result": {**figures(outcome.stats), "executionSeconds": round(outcome.execution_time, 3)},
        "failureClass": str(error.type) if error else None,
        "reason": _reason(outcome),
        "message": (error.message if error else ("the strategy made no trades" if phase == NO_TRADES
                                                 else "backtest finished"))[:1000],
        "completedJob": job,
        "finishedAt": now(),
    }
    if run_id is not None:
        status["runId"] = run_id
    if duration is not None:
        status["durationSeconds"] = round(duration, 3)
    if started is not None:
        status["startedAt"] = started
    return status


def _reason(outcome: RunOutcome) -> str:
    if outcome.error is None:
        return "NoTrades" if outcome.status is Status.NO_TRADES else "Completed"
    return "".join(part.capitalize() for part in str(outcome.error.type).split("_"))


def seconds_since(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        moment = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    return max(0.0, (datetime.now(UTC) - moment).total_seconds())
