"""Turn a worker's raw report into a RunOutcome with exactly one failure class.

Pure: it only reads the report. Everything that came out of the sandbox (the
result JSON, stdout, stderr) is untrusted and is parsed defensively here.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from typing import Any

from rbi import diagnostics
from rbi.outcome import FailureClass, RunError, RunOutcome, Status
from rbi.stats import json_safe, parse_stats_text

TAIL_CHARS = 4000
MAX_STATS_KEYS = 200
_STRATEGY_CLASSES = {c.value for c in FailureClass} - {FailureClass.SANDBOX_ERROR.value}


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _decode_json(text: str) -> dict[str, Any] | None:
    try:
        # NaN and infinity are not JSON; a forged or careless result may contain them anyway.
        data = json.loads(text, parse_constant=lambda _: None)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _clean_stats(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        return {}
    cleaned: dict[str, Any] = {}
    for key, value in list(raw.items())[:MAX_STATS_KEYS]:
        if not isinstance(key, str) or len(key) > 64:
            continue
        if isinstance(value, bool) or value is None or isinstance(value, int | float):
            cleaned[key] = json_safe(value)
        elif isinstance(value, str):
            cleaned[key] = value[:200]
    if "num_trades" in cleaned and isinstance(cleaned["num_trades"], float):
        cleaned["num_trades"] = int(cleaned["num_trades"])
    return cleaned


def _error_from_result(raw: Any) -> RunError | None:
    if not isinstance(raw, dict):
        return None
    kind = raw.get("type")
    # A strategy cannot declare an infrastructure failure about itself.
    failure = FailureClass(kind) if kind in _STRATEGY_CLASSES else FailureClass.RUNTIME_ERROR
    line = raw.get("line")
    detail = raw.get("detail")
    return RunError(
        type=failure,
        message=str(raw.get("message") or failure.value)[:2000],
        line=line if isinstance(line, int) and not isinstance(line, bool) and line > 0 else None,
        detail=str(detail)[:200] if detail is not None else None,
    )


def _from_status(report: dict[str, Any], status: int | None) -> RunError | None:
    """Failures seen only in how the sandboxed process ended."""
    cgroup = report.get("cgroup") or {}
    if status is None:
        return None
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if cgroup.get("oom_killed"):
            return RunError(FailureClass.MEMORY_LIMIT, "killed by the out-of-memory killer at the memory limit")
        if sig == signal.SIGXCPU:
            return RunError(FailureClass.TIMEOUT, "CPU time limit exceeded (SIGXCPU)")
        if sig == signal.SIGXFSZ:
            return RunError(FailureClass.DISK_LIMIT, "file size limit exceeded (SIGXFSZ)")
        if sig == signal.SIGKILL and not report.get("result"):
            return RunError(FailureClass.MEMORY_LIMIT, "killed by SIGKILL, most likely out of memory")
        return RunError(FailureClass.RUNTIME_ERROR, f"the strategy process crashed with {_signal_name(sig)}",
                        detail=_signal_name(sig))
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0 and not report.get("result"):
        code = os.WEXITSTATUS(status)
        return RunError(FailureClass.RUNTIME_ERROR, f"the strategy exited with status {code} before reporting a result",
                        detail="exit")
    return None


def _verified(result: dict[str, Any], verify: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any] | RunError:
    try:
        return verify(result)
    except Exception as exc:  # a bug of ours, never the strategy's: say so rather than pass the figures
        message = f"the host could not verify the run: {type(exc).__name__}: {exc}"
        return RunError(FailureClass.SANDBOX_ERROR, message[:500])


def classify_report(report: dict[str, Any], *, mode: str | None = None,
                    verify: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> RunOutcome:
    """The outcome of one sandbox report.

    `verify` (rbi.integrity.verify_report bound to the served data) replaces the run's own figures,
    equity curve and trades with the host's recomputation, or fails the run as integrity_error.
    """
    stdout = str(report.get("stdout") or "")
    stderr = str(report.get("stderr") or "")
    base: dict[str, Any] = {
        "execution_time": float(report.get("wall_time") or 0.0),
        "stdout_tail": stdout[-TAIL_CHARS:],
        "stderr_tail": stderr[-TAIL_CHARS:],
        "mode": mode,
    }
    cgroup = report.get("cgroup") or {}
    peak = cgroup.get("peak_memory") or report.get("max_rss_bytes")
    base["peak_memory_bytes"] = int(peak) if isinstance(peak, int | float) else None

    if report.get("worker_error"):
        return RunOutcome.failed(RunError(FailureClass.SANDBOX_ERROR, str(report["worker_error"])), **base)
    if report.get("data_error"):
        return RunOutcome.failed(RunError(FailureClass.DATA_ERROR, str(report["data_error"])), **base)
    if report.get("setup_error"):
        return RunOutcome.failed(RunError(FailureClass.SANDBOX_ERROR, str(report["setup_error"])), **base)

    killed = report.get("killed")
    if killed == "timeout":
        return RunOutcome.failed(RunError(FailureClass.TIMEOUT, "wall-clock time limit exceeded; the whole "
                                          "process tree was killed"), **base)
    if killed == "output":
        total = int(report.get("stdout_total") or 0) + int(report.get("stderr_total") or 0)
        return RunOutcome.failed(RunError(FailureClass.OUTPUT_LIMIT, f"printed more than the output limit "
                                          f"({total} bytes seen); the run was stopped"), **base)
    if killed == "result":
        return RunOutcome.failed(RunError(FailureClass.OUTPUT_LIMIT, "the result channel received more data "
                                          "than allowed; the run was stopped"), **base)
    if not report.get("ready"):
        if cgroup.get("oom_killed"):
            return RunOutcome.failed(RunError(FailureClass.MEMORY_LIMIT, "out of memory while starting"), **base)
        setup_line = next((ln for ln in stderr.splitlines() if "rbi-sandbox-setup-failed" in ln),
                          "the sandbox did not start")
        return RunOutcome.failed(RunError(FailureClass.SANDBOX_ERROR, setup_line[:500]), **base)

    result = _decode_json(report["result"]) if isinstance(report.get("result"), str) else None
    status_error = _from_status(report, report.get("inner_status"))
    if result is None:
        error = status_error or RunError(FailureClass.RUNTIME_ERROR,
                                         "the strategy ended without a valid result (the result channel was "
                                         "closed, truncated or overwritten)", detail="no_result")
        return RunOutcome.failed(error, **base)

    if verify is not None:
        checked = _verified(result, verify)
        if isinstance(checked, RunError):
            return RunOutcome.failed(checked, **base)
        result = checked
    if isinstance(result.get("execution_time"), int | float):
        base["execution_time"] = float(result["execution_time"])
    params = result.get("params")
    base["params"] = json_safe(params) if isinstance(params, dict) else {}
    if isinstance(result.get("equity_curve"), list):
        base["equity_curve"] = result["equity_curve"][:5000]
    if isinstance(result.get("trades"), list):
        base["trades"] = result["trades"][:200_000]
    result_error = _error_from_result(result.get("error"))
    if result_error is not None:
        raw_error = result.get("error")
        trace = raw_error.get("traceback") if isinstance(raw_error, dict) else None
        return RunOutcome.failed(result_error, traceback=trace[-4000:] if isinstance(trace, str) and trace else None,
                                 **base)
    if status_error is not None:
        return RunOutcome.failed(status_error, **base)

    stats = _clean_stats(result.get("stats"))
    if not stats:
        # Figures are only ever taken from a backtest the runner saw (and the host recomputed); a
        # printed stats table is the script's own claim, so it is named and never stored.
        printed = (mode or result.get("mode")) == "script" and bool(parse_stats_text(stdout))
        message = ("the script printed a statistics table, but ran no backtest the runner could see; printed "
                   "figures are never taken" if printed else
                   "the code finished without running a backtest: no Backtest.run() result")
        return RunOutcome.failed(RunError(FailureClass.RUNTIME_ERROR, message, detail="no_backtest"), **base)
    trades = stats.get("num_trades")
    status = Status.NO_TRADES if trades == 0 else Status.SUCCEEDED
    reason = diagnostics.explain(diagnostics.clean(result.get("diagnostics"))) if status is Status.NO_TRADES else None
    return RunOutcome(status=status, stats=stats, no_trades_reason=reason, **base)
