"""The Job container's command, run for real: `python -m rbi.runner` with the pod's flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rbi.k8s import manifests as m
from rbi.k8s.results import marked_lines, parse_termination_message
from rbi.runner import RESULT_MARKER, TRIAL_MARKER

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run(tmp_path: Path, request: dict[str, object], *extra: str, env: dict[str, str] | None = None) -> tuple[
        dict[str, object] | None, str]:
    code = tmp_path / "strategy.py"
    code.write_text((REPO / "examples" / "strategies" / "sma_cross.py").read_text())
    request = {**request, "code_path": str(code)}
    (tmp_path / "request.json").write_text(json.dumps(request))
    termination = tmp_path / "termination-log"
    done = subprocess.run(
        [sys.executable, "-m", "rbi.runner", "--request", str(tmp_path / "request.json"), "--termination-log",
         str(termination), "--print-result", "--scratch", str(tmp_path), *extra],
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}, check=True)
    return parse_termination_message(termination.read_text()), done.stdout


def test_run_writes_the_termination_message_and_the_marked_log_line(tmp_path: Path) -> None:
    request = m.run_request(mode="class", params={"fast": 20, "slow": 80}, backtest={"cash": 1_000_000},
                            strategy_class=None, data_path="bundled:BTC-USD-15m")
    message, stdout = run(tmp_path, request)
    assert message is not None and message["full"] is True and message["error"] is None
    # Class mode leaves the statistics to the host: the message says a backtest ran, the log line has its facts.
    assert message["stats"] is None and message["ran_backtest"] is True
    [full] = marked_lines(stdout, RESULT_MARKER)
    assert full["facts"]["trades"] and full["series"] is False


def test_trial_shard_runs_its_share_on_a_fraction_of_the_rows(tmp_path: Path) -> None:
    request = m.run_request(mode="class", params={}, backtest={}, strategy_class=None,
                            data_path="bundled:BTC-USD-15m")
    trials = m.build_trials_document(trials=[(0, {"fast": 5, "slow": 60}), (1, {"fast": 10, "slow": 60}),
                                             (2, {"fast": 15, "slow": 60})],
                                     shards=2, keep=["num_trades", "sharpe_ratio"], data_fraction=(0.0, 0.5))
    (tmp_path / "trials.json").write_text(json.dumps(trials))
    message, stdout = run(tmp_path, request, "--trials", str(tmp_path / "trials.json"),
                          env={"JOB_COMPLETION_INDEX": "1"})
    assert message is not None
    rows = message["trials"]
    assert isinstance(rows, list) and [row["i"] for row in rows] == [1]
    assert rows[0]["e"] is None
    # The figures are the operator's recomputation from the trial's log line, which carries the facts.
    [line] = marked_lines(stdout, TRIAL_MARKER)
    assert line["index"] == 1 and line["report"]["facts"]["trades"]
