"""The same shapes through the Job container's command (`python -m rbi.runner`): it is one runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rbi.integrity import host_dataset, verifier
from rbi.k8s import manifests as m
from rbi.k8s.results import marked_lines
from rbi.prepare.extract import extract_code
from rbi.prepare.inspect_code import backtest_options, detect_mode
from rbi.runner import RESULT_MARKER

FILES = Path(__file__).parent / "files"
pytestmark = pytest.mark.slow


def _job(tmp_path: Path, name: str, *, mode: str | None = None) -> dict[str, object]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    code = extract_code((FILES / name).read_text())
    (tmp_path / "strategy.py").write_text(code)
    chosen = mode or detect_mode(code)
    request = {**m.run_request(mode=chosen, params={}, backtest=backtest_options(code), strategy_class=None,
                               data_path="bundled:BTC-USD-15m"), "code_path": str(tmp_path / "strategy.py")}
    (tmp_path / "request.json").write_text(json.dumps(request))
    done = subprocess.run([sys.executable, "-m", "rbi.runner", "--request", str(tmp_path / "request.json"),
                           "--print-result", "--scratch", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ), cwd=tmp_path, check=True)
    [result] = marked_lines(done.stdout, RESULT_MARKER)
    assert isinstance(result, dict)
    # As the operator takes it: the figures are the host's recomputation of the run's facts.
    verified = verifier(host_dataset("bundled:BTC-USD-15m"), mode=chosen)(result)
    assert verified.get("verified") is True or verified["error"] is not None, verified
    return verified


@pytest.mark.parametrize("mode", [None, "class"])
def test_a_hybrid_answer_runs_in_the_job_runner_in_either_mode(tmp_path: Path, mode: str | None) -> None:
    # Its top-level read of /Users/.../BTC-USD-15m.csv is served the bundled dataset in both modes, and
    # both give the script's own figures (its cash and commission).
    result = _job(tmp_path, "answer_fixed_hybrid.py", mode=mode)
    assert result["error"] is None, result["error"]
    assert result["mode"] == (mode or "script")
    stats = result["stats"]
    assert isinstance(stats, dict) and stats["num_trades"] > 0
    assert any(path.startswith("/Users/") for path in result["redirected_reads"])
    script = _job(tmp_path / "script", "answer_fixed_hybrid.py") if mode else result
    assert stats["return_pct"] == pytest.approx(script["stats"]["return_pct"], abs=1e-9)


def test_a_script_that_checks_its_path_first_runs_in_the_job_runner(tmp_path: Path) -> None:
    result = _job(tmp_path, "hybrid_path_exists.py")
    assert result["error"] is None, result["error"]
    # It checked os.path.exists(DATA_FILE) and did not exit: the exists check and the read were both served.
    assert result["stats"]["num_trades"] > 0
    assert [path.endswith("data/rbi/BTC-USD-15m.csv") for path in result["redirected_reads"]] == [True]
