"""What comes back from Jobs is untrusted; Kubernetes reasons map onto the engine's failure classes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from rbi.k8s.reasons import job_failure, job_state, stuck_pod_failure
from rbi.k8s.results import parse_termination_message, run_outcome, trial_outcomes
from rbi.operator.queue import JobQueue
from rbi.outcome import FailureClass, Status
from rbi.runner import RESULT_MARKER, TERMINATION_LIMIT, compact_result, compact_trials

STATS = {"return_pct": 12.5, "sharpe_ratio": 1.25, "max_drawdown_pct": -8.0, "win_rate_pct": 55.0, "num_trades": 42}


def job(condition: str | None = None, reason: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if condition:
        status["conditions"] = [{"type": condition, "status": "True", "reason": reason}]
    return {"metadata": {"name": "j"}, "status": status}


def pod(*, message: str | None = None, exit_code: int = 0, reason: str = "Completed",
        pod_reason: str | None = None, pod_message: str = "", waiting: str | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {"waiting": {"reason": waiting, "message": "pull failed"}} if waiting else {
        "terminated": {"exitCode": exit_code, "reason": reason, **({"message": message} if message else {})}}
    status: dict[str, Any] = {"containerStatuses": [{"name": "runner", "state": state}]}
    if pod_reason:
        status.update({"reason": pod_reason, "message": pod_message})
    return {"metadata": {"name": "p"}, "status": status}


def test_a_full_termination_message_is_the_result() -> None:
    message = compact_result({"mode": "class", "error": None, "stats": STATS, "execution_time": 0.2}).decode()
    outcome = run_outcome(job("Complete"), [pod(message=message)], container="runner")
    assert outcome.status is Status.SUCCEEDED and outcome.stats["num_trades"] == 42


def test_a_truncated_message_falls_back_to_the_pod_log() -> None:
    stats = {**STATS, **{f"extra_{i}": "x" * 150 for i in range(40)}}
    report = {"mode": "class", "error": None, "stats": stats, "execution_time": 0.2}
    message = compact_result(report)
    assert len(message) <= TERMINATION_LIMIT and json.loads(message)["full"] is False
    log = "noise\n" + RESULT_MARKER + json.dumps(report) + "\n"
    outcome = run_outcome(job("Complete"), [pod(message=message.decode())], container="runner", log=log)
    assert outcome.stats["extra_0"] == "x" * 150 and "noise" in outcome.stdout_tail


@pytest.mark.parametrize("message", ["not json", "[1, 2]", json.dumps({"v": 2}), "{" * 5000,
                                     json.dumps({"v": 1, "stats": {"x": "y" * 5000}})])
def test_bad_messages_are_refused(message: str) -> None:
    assert parse_termination_message(message) is None
    outcome = run_outcome(job("Failed", "PodFailurePolicy"), [pod(message=message, exit_code=1, reason="Error")],
                          container="runner")
    assert outcome.status is Status.FAILED and outcome.error is not None


def test_a_strategy_cannot_claim_a_platform_failure() -> None:
    forged = json.dumps({"v": 1, "full": True, "error": {"type": "sandbox_error", "message": "not me"}})
    outcome = run_outcome(job("Complete"), [pod(message=forged)], container="runner")
    assert outcome.error is not None and outcome.error.type is FailureClass.RUNTIME_ERROR


def test_nan_and_infinity_never_come_through() -> None:
    message = '{"v": 1, "full": true, "error": null, "stats": {"sharpe_ratio": NaN, "num_trades": 3, "x": Infinity}}'
    outcome = run_outcome(job("Complete"), [pod(message=message)], container="runner")
    assert outcome.stats["sharpe_ratio"] is None and outcome.stats["x"] is None


@pytest.mark.parametrize(("the_job", "the_pod", "expected"), [
    (job("Failed", "PodFailurePolicy"), pod(exit_code=137, reason="OOMKilled"), FailureClass.MEMORY_LIMIT),
    (job("Failed", "DeadlineExceeded"), pod(exit_code=137, reason="Error"), FailureClass.TIMEOUT),
    (job("Failed", "PodFailurePolicy"), pod(exit_code=137, reason="Error", pod_reason="Evicted",
                                            pod_message="Pod ephemeral local storage usage exceeds the total limit"),
     FailureClass.DISK_LIMIT),
    (job(), pod(waiting="ImagePullBackOff"), FailureClass.SANDBOX_ERROR),
    (job(), pod(waiting="ErrImagePull"), FailureClass.SANDBOX_ERROR),
])
def test_kubernetes_reasons_map_to_failure_classes(the_job: dict[str, Any], the_pod: dict[str, Any],
                                                   expected: FailureClass) -> None:
    error = job_failure(the_job, [the_pod])
    assert error is not None and error.type is expected
    waiting = the_pod["status"]["containerStatuses"][0]["state"].get("waiting") or {}
    stuck = stuck_pod_failure(the_pod)
    assert (stuck is not None) == (waiting.get("reason") == "ImagePullBackOff")  # ErrImagePull may still recover


def test_job_state_waits_for_the_final_condition() -> None:
    assert not job_state({"status": {"conditions": [{"type": "FailureTarget", "status": "True"}]}}).finished
    assert job_state(job("Complete")).succeeded
    assert job_state(job("Failed", "DeadlineExceeded")).reason == "DeadlineExceeded"


def test_trial_shards_come_back_by_index() -> None:
    results = [{"index": i, "report": {"stats": {**STATS, "num_trades": i}, "error": None}} for i in (0, 2)]
    shard0 = compact_trials(results, ["num_trades", "sharpe_ratio"]).decode()
    failed = [{"index": 1, "report": {"error": {"type": "runtime_error", "message": "boom"}}}]
    shard1 = compact_trials(failed, ["num_trades"]).decode()
    outcomes = trial_outcomes(job("Complete"), [pod(message=shard0), pod(message=shard1)], container="runner")
    assert outcomes[2].stats["num_trades"] == 2 and outcomes[0].status is Status.NO_TRADES
    assert outcomes[1].error is not None and outcomes[1].error.type is FailureClass.RUNTIME_ERROR


def test_compact_result_always_fits() -> None:
    huge = {"mode": "class", "error": {"type": "runtime_error", "message": "x" * 100_000, "detail": "y" * 1000},
            "stats": {f"k{i}": 1.0 for i in range(500)}, "execution_time": 1.0}
    payload = compact_result(huge)
    assert len(payload) <= TERMINATION_LIMIT and json.loads(payload)["error"]["type"] == "runtime_error"


@pytest.mark.asyncio
async def test_the_queue_bounds_active_jobs_in_fifo_order() -> None:
    queue = JobQueue(2)
    started: list[str] = []

    def starter(key: str) -> Any:
        async def start() -> bool:
            started.append(key)
            return True
        return start

    for key in "abcde":
        assert queue.submit(key, starter(key), group=key)
    assert not queue.submit("a", starter("a"))  # idempotent
    runner = asyncio.create_task(queue.run())
    await asyncio.sleep(0.05)
    assert started == ["a", "b"] and queue.active == 2 and queue.waiting == 3
    queue.release("a")
    await asyncio.sleep(0.05)
    assert started == ["a", "b", "c"]
    queue.forget("e")
    queue.release("b")
    queue.release("c")
    await asyncio.sleep(0.05)
    assert started == ["a", "b", "c", "d"] and queue.stats.peak_active == 2
    runner.cancel()
