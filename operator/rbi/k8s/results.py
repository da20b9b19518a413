"""What comes back from a Job, read as untrusted input. Pure.

The runner writes a compact JSON (at most 4 KiB) as its container's termination message
and prints the full result as one marked line in the pod log. Both could have been
written by the strategy itself, so both are size-bounded, parsed as JSON only, and cleaned
by rbi.classify like every other sandbox report; a strategy cannot claim a platform failure.
With a verifier (the operator always passes one), figures come only from the log's full result,
recomputed from its facts by rbi.integrity; a termination message never supplies figures.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rbi.classify import classify_report
from rbi.k8s.reasons import job_failure, job_state, terminated
from rbi.outcome import FailureClass, RunError, RunOutcome
from rbi.runner import RESULT_MARKER, TERMINATION_LIMIT, TRIAL_MARKER

MAX_LOG_LINE = 4 * 2**20
MAX_TRIALS = 100_000


def _decode(text: str | bytes | None, limit: int) -> dict[str, Any] | None:
    if text is None:
        return None
    raw = text.encode() if isinstance(text, str) else text
    if not raw or len(raw) > limit:
        return None
    try:
        data = json.loads(raw, parse_constant=lambda _: None)
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def parse_termination_message(text: str | None) -> dict[str, Any] | None:
    """The compact result, or None when it is missing, too long, not JSON, or not ours (v != 1)."""
    data = _decode(text, TERMINATION_LIMIT)
    if data is None or data.get("v") != 1:
        return None
    return data


def marked_lines(log: str | None, marker: str) -> list[dict[str, Any]]:
    if not log:
        return []
    found = []
    for line in log.splitlines():
        if line.startswith(marker):
            data = _decode(line[len(marker):], MAX_LOG_LINE)
            if data is not None:
                found.append(data)
    return found


def strip_markers(log: str | None) -> str:
    if not log:
        return ""
    return "\n".join(ln for ln in log.splitlines() if not ln.startswith((RESULT_MARKER, TRIAL_MARKER)))


def needs_log(message: Mapping[str, Any] | None) -> bool:
    """True when the termination message does not carry the whole result."""
    return message is None or message.get("full") is not True


@dataclass(frozen=True, slots=True)
class PodResult:
    pod: Mapping[str, Any]
    message: dict[str, Any] | None
    exit_code: int | None


def pod_results(pods: Iterable[Mapping[str, Any]], container: str) -> list[PodResult]:
    results = []
    for pod in pods:
        state = terminated(pod, container)
        message = parse_termination_message(state.get("message")) if state else None
        code = state.get("exitCode") if state else None
        results.append(PodResult(pod, message, code if isinstance(code, int) and not isinstance(code, bool) else None))
    return results


def _report(result: Mapping[str, Any] | None, log: str | None) -> dict[str, Any]:
    report: dict[str, Any] = {"ready": True, "stdout": strip_markers(log)}
    if result is not None:
        report["result"] = json.dumps(result, allow_nan=True)
        elapsed = result.get("execution_time")
        report["wall_time"] = float(elapsed) if isinstance(elapsed, int | float) and not isinstance(
            elapsed, bool) else 0.0
    return report


Verify = Callable[[dict[str, Any]], dict[str, Any]]


def run_outcome(job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]], *, container: str,
                log: str | None = None, mode: str | None = None, verify: Verify | None = None) -> RunOutcome:
    """The outcome of a finished single-run Job: the platform's failure if any, else the runner's result.

    With `verify` (rbi.integrity.verifier), figures come only from the full result in the pod log,
    recomputed by the host: a termination message carries no facts, so its figures are never taken.
    """
    pods = list(pods)
    platform = job_failure(job, pods)
    if platform is not None:
        return RunOutcome.failed(platform, mode=mode, stdout_tail=strip_markers(log)[-4000:])
    results = [r for r in pod_results(pods, container) if r.message is not None or r.exit_code is not None]
    message = results[-1].message if results else None
    full: dict[str, Any] | None = message if not needs_log(message) and verify is None else None
    if full is None:
        lines = marked_lines(log, RESULT_MARKER)
        full = lines[-1] if lines else message
    if full is None:
        state = job_state(job)
        if not pods:
            return RunOutcome.failed(RunError(FailureClass.SANDBOX_ERROR, "the Job finished without a pod to read "
                                              f"({state.reason or 'no reason given'})"), mode=mode)
        detail = f"exit code {results[-1].exit_code}" if results and results[-1].exit_code is not None else None
        return RunOutcome.failed(RunError(FailureClass.RUNTIME_ERROR, "the sandbox ended without a valid result "
                                          "(no termination message and no result line in the log)",
                                          detail=detail or "no_result"),
                                 mode=mode, stdout_tail=strip_markers(log)[-4000:])
    return classify_report(_report(full, log), mode=mode or _text(full.get("mode")), verify=verify)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and len(value) < 20 else None


def trial_outcomes(job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]], *, container: str,
                   logs: Mapping[str, str] | None = None, verify: Verify | None = None) -> dict[int, RunOutcome]:
    """Each trial's outcome from the shards of an Indexed Job; trials of a shard that died share its failure.

    With `verify`, only the trial lines of the pod logs count (each recomputed by the host).
    """
    pods = list(pods)
    outcomes: dict[int, RunOutcome] = {}
    platform = job_failure(job, pods)
    for result in pod_results(pods, container):
        name = str((result.pod.get("metadata") or {}).get("name") or "")
        rows: list[tuple[int, dict[str, Any]]] = []
        if result.message is not None and result.message.get("full") is True and verify is None:
            for row in result.message.get("trials") or []:
                if isinstance(row, dict) and isinstance(row.get("i"), int):
                    error = {"type": row.get("e"), "message": row.get("m") or row.get("e")} if row.get("e") else None
                    rows.append((row["i"], {"stats": row.get("s") or {}, "error": error}))
        else:
            for line in marked_lines((logs or {}).get(name), TRIAL_MARKER):
                if isinstance(line.get("index"), int) and isinstance(line.get("report"), dict):
                    rows.append((line["index"], line["report"]))
        for index, body in rows[:MAX_TRIALS]:
            if 0 <= index < MAX_TRIALS:
                outcomes[index] = classify_report(_report(body, None), mode="class", verify=verify)
    if platform is not None and not outcomes:
        return {-1: RunOutcome.failed(platform)}
    return outcomes
