"""The Job path: the operator recomputes from the pod log's full result, never a termination message's figures."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from rbi import runner
from rbi.integrity import host_dataset, verifier
from rbi.k8s.results import run_outcome, trial_outcomes
from rbi.outcome import FailureClass, Status

ROWS = (0.0, 0.1)  # the Job's dataFraction: the first tenth of the bundled data

SMA = textwrap.dedent("""
    import talib
    from backtesting import Strategy
    from backtesting.lib import crossover

    class SmaCross(Strategy):
        def init(self):
            self.a = self.I(talib.SMA, self.data.Close, 10)
            self.b = self.I(talib.SMA, self.data.Close, 30)

        def next(self):
            if crossover(self.a, self.b):
                self.position.close()
                self.buy(size=0.5)
            elif crossover(self.b, self.a):
                self.position.close()
""")


def _job() -> dict[str, Any]:
    return {"metadata": {"name": "j"}, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}


def _pod(message: bytes) -> dict[str, Any]:
    state = {"terminated": {"exitCode": 0, "reason": "Completed", "message": message.decode()}}
    return {"metadata": {"name": "p"}, "status": {"containerStatuses": [{"name": "runner", "state": state}]}}


@pytest.fixture(scope="module")
def pod_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What `python -m rbi.runner` in a Job reports for the bundled dataset's first tenth."""
    from rbi.prepare.data import load_ohlcv

    code = tmp_path_factory.mktemp("job") / "strategy.py"
    code.write_text(SMA)
    path = host_dataset("bundled:BTC-USD-15m")
    assert path is not None
    count = len(load_ohlcv(path))
    request = runner.RunRequest(mode="class", code_path=str(code), data_path=path, include_series=False,
                                data_range=(int(count * ROWS[0]), int(count * ROWS[1])))
    report = runner.execute(request)
    assert report["error"] is None and report["facts"]
    parsed: dict[str, Any] = json.loads(runner.encode_report(report))
    return parsed


@pytest.fixture(scope="module")
def own_stats(pod_report: dict[str, Any]) -> dict[str, Any]:
    """What backtesting.py itself gives for the same rows: the figures the host must arrive at."""
    import warnings

    from backtesting import Backtest

    from rbi import stats as stats_module
    from rbi.prepare.data import load_ohlcv

    path = host_dataset("bundled:BTC-USD-15m")
    assert path is not None
    frame = load_ohlcv(path)
    count = len(frame)
    namespace: dict[str, Any] = {}
    exec(SMA, namespace)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = Backtest(frame.iloc[int(count * ROWS[0]):int(count * ROWS[1])], namespace["SmaCross"],
                         **runner.DEFAULT_BACKTEST).run()
    assert pod_report["stats"] is None, "class mode leaves the statistics to the host"
    return stats_module.stats_to_dict(stats)


def _verify() -> Any:
    return verifier(host_dataset("bundled:BTC-USD-15m"), mode="class", data_fraction=ROWS)


def test_an_honest_job_is_recomputed_from_its_log(pod_report: dict[str, Any], own_stats: dict[str, Any]) -> None:
    log = runner.RESULT_MARKER + json.dumps(pod_report) + "\n"
    outcome = run_outcome(_job(), [_pod(runner.compact_result(pod_report))], container="runner", log=log,
                          verify=_verify())
    assert outcome.status is Status.SUCCEEDED, outcome.error
    assert list(outcome.stats) == list(own_stats)
    assert all(outcome.stats[k] == pytest.approx(v, rel=1e-12, abs=1e-12) if isinstance(v, float) else
               outcome.stats[k] == v for k, v in own_stats.items())


def test_a_full_termination_message_alone_is_not_taken(pod_report: dict[str, Any]) -> None:
    """The message carries figures but no facts; without the log line the run cannot be verified."""
    outcome = run_outcome(_job(), [_pod(runner.compact_result(pod_report))], container="runner", log="",
                          verify=_verify())
    assert outcome.error is not None and outcome.error.type is FailureClass.INTEGRITY_ERROR, outcome
    assert outcome.stats == {}


def test_forged_figures_in_the_log_fail(pod_report: dict[str, Any], own_stats: dict[str, Any]) -> None:
    forged = json.loads(json.dumps(pod_report))
    forged["stats"] = {**own_stats, "return_pct": 98765.4}
    log = runner.RESULT_MARKER + json.dumps(forged) + "\n"
    outcome = run_outcome(_job(), [_pod(runner.compact_result(forged))], container="runner", log=log,
                          verify=_verify())
    assert outcome.error is not None and outcome.error.type is FailureClass.INTEGRITY_ERROR
    assert "return_pct" in outcome.error.message


def test_trial_lines_are_recomputed_and_compact_rows_ignored(pod_report: dict[str, Any],
                                                             own_stats: dict[str, Any]) -> None:
    honest = {"index": 0, "report": pod_report}
    forged = {"index": 1, "report": {**pod_report, "stats": {**own_stats, "sharpe_ratio": 42.0}}}
    log = "\n".join(runner.TRIAL_MARKER + json.dumps(line) for line in (honest, forged)) + "\n"
    message = runner.compact_trials([honest, forged], ["sharpe_ratio"])
    outcomes = trial_outcomes(_job(), [_pod(message)], container="runner", logs={"p": log}, verify=_verify())
    assert outcomes[0].status is Status.SUCCEEDED, outcomes[0].error
    assert outcomes[1].error is not None and outcomes[1].error.type is FailureClass.INTEGRITY_ERROR
    alone = trial_outcomes(_job(), [_pod(message)], container="runner", logs={}, verify=_verify())
    assert alone == {}, "a termination message's trial figures must not count"


def test_a_dataset_the_operator_cannot_read_fails_the_run(pod_report: dict[str, Any], tmp_path: Path) -> None:
    assert host_dataset(str(tmp_path / "missing.csv")) is None
    log = runner.RESULT_MARKER + json.dumps(pod_report) + "\n"
    outcome = run_outcome(_job(), [_pod(runner.compact_result(pod_report))], container="runner", log=log,
                          verify=verifier(None, mode="class"))
    assert outcome.error is not None and outcome.error.type is FailureClass.INTEGRITY_ERROR
    assert outcome.error.detail == "no_data"
