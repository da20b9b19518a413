"""Classification of raw worker reports: one class per failure, untrusted results handled."""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest

from rbi.classify import classify_report
from rbi.outcome import FailureClass, Status

GOOD_STATS = {"return_pct": 12.5, "sharpe_ratio": 1.1, "num_trades": 7, "max_drawdown_pct": -3.0}


def _report(result: dict[str, Any] | str | None = None, **extra: Any) -> dict[str, Any]:
    payload = json.dumps(result) if isinstance(result, dict) else result
    base: dict[str, Any] = {"ready": True, "killed": None, "inner_status": 0, "outer_status": 0,
                            "wall_time": 0.5, "stdout": "", "stderr": "", "result": payload,
                            "max_rss_bytes": 1000}
    base.update(extra)
    return base


def _signaled(sig: int) -> int:
    return sig  # a wait status for "killed by sig" is the signal number itself


def test_success_and_no_trades() -> None:
    outcome = classify_report(_report({"stats": GOOD_STATS, "params": {"n": 1}}), mode="class")
    assert outcome.status is Status.SUCCEEDED and outcome.stats["return_pct"] == 12.5
    assert outcome.params == {"n": 1}
    none = classify_report(_report({"stats": {**GOOD_STATS, "num_trades": 0}}), mode="class")
    assert none.status is Status.NO_TRADES and none.error is None


@pytest.mark.parametrize(("extra", "expected"), [
    ({"killed": "timeout"}, FailureClass.TIMEOUT),
    ({"killed": "output", "stdout_total": 10**9}, FailureClass.OUTPUT_LIMIT),
    ({"killed": "result"}, FailureClass.OUTPUT_LIMIT),
    ({"worker_error": "worker died"}, FailureClass.SANDBOX_ERROR),
    ({"data_error": "no Close column"}, FailureClass.DATA_ERROR),
    ({"ready": False, "stderr": "rbi-sandbox-setup-failed: OSError: mount"}, FailureClass.SANDBOX_ERROR),
    ({"ready": False, "cgroup": {"oom_killed": True}}, FailureClass.MEMORY_LIMIT),
    ({"inner_status": _signaled(signal.SIGXCPU), "result": None}, FailureClass.TIMEOUT),
    ({"inner_status": _signaled(signal.SIGXFSZ), "result": None}, FailureClass.DISK_LIMIT),
    ({"inner_status": _signaled(signal.SIGKILL), "result": None, "cgroup": {"oom_killed": True}},
     FailureClass.MEMORY_LIMIT),
    ({"inner_status": _signaled(signal.SIGSEGV), "result": None}, FailureClass.RUNTIME_ERROR),
    ({"inner_status": 3 << 8, "result": None}, FailureClass.RUNTIME_ERROR),
])
def test_each_failure_gets_exactly_one_class(extra: dict[str, Any], expected: FailureClass) -> None:
    report = _report({"stats": GOOD_STATS})
    report.update(extra)
    outcome = classify_report(report, mode="class")
    assert outcome.status is Status.FAILED
    assert outcome.error is not None and outcome.error.type is expected
    assert outcome.error.message


def test_strategy_cannot_claim_an_infrastructure_failure() -> None:
    forged = {"error": {"type": "sandbox_error", "message": "blame the platform", "line": 3}}
    outcome = classify_report(_report(forged), mode="class")
    assert outcome.error is not None and outcome.error.type is FailureClass.RUNTIME_ERROR
    assert outcome.error.line == 3


@pytest.mark.parametrize("garbage", ["not json", "[1, 2]", '{"stats": ', "", "NaN"])
def test_garbage_result_is_a_classified_failure(garbage: str) -> None:
    outcome = classify_report(_report(garbage), mode="class")
    assert outcome.status is Status.FAILED
    assert outcome.error is not None and outcome.error.type is FailureClass.RUNTIME_ERROR


def test_untrusted_stats_are_sanitised() -> None:
    hostile = '{"stats": {"return_pct": NaN, "sharpe_ratio": Infinity, "num_trades": 3.0, ' \
              '"nested": {"a": 1}, "' + "k" * 100 + '": 1, "note": "' + "x" * 1000 + '"}}'
    outcome = classify_report(_report(hostile), mode="class")
    assert outcome.status is Status.SUCCEEDED
    assert outcome.stats["return_pct"] is None and outcome.stats["sharpe_ratio"] is None
    assert outcome.stats["num_trades"] == 3 and isinstance(outcome.stats["num_trades"], int)
    assert "nested" not in outcome.stats and len(outcome.stats["note"]) == 200
    assert all(len(k) <= 64 for k in outcome.stats)


def test_printed_stats_are_never_taken() -> None:
    """A printed table is the script's own claim: no captured backtest, no figures (rbi.integrity)."""
    printed = "\n".join([
        "Start                     2023-01-01 00:00:00",
        "Return [%]                          12.5",
        "Sharpe Ratio                         0.8",
        "# Trades                              4",
        "Win Rate [%]                         --",
    ])
    outcome = classify_report(_report({"stats": None, "mode": "script"}, stdout=printed), mode="script")
    assert outcome.status is Status.FAILED and outcome.error is not None
    assert outcome.error.detail == "no_backtest" and "printed" in outcome.error.message
    assert outcome.stats == {}


def test_script_without_backtest_is_reported() -> None:
    outcome = classify_report(_report({"stats": None, "mode": "script"}, stdout="hello"), mode="script")
    assert outcome.error is not None and outcome.error.detail == "no_backtest"
