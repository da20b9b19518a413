"""The `rbi` command end to end, as a user runs it: real processes, real sandbox, real SQLite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import EXAMPLES

STABLE_KEYS = {"status", "error", "stats", "execution_time", "peak_memory_bytes", "stdout_tail", "stderr_tail",
               "code_hash", "version"}
REQUIRED_STATS = {"return_pct", "buy_hold_return_pct", "sharpe_ratio", "sortino_ratio", "calmar_ratio",
                  "max_drawdown_pct", "win_rate_pct", "num_trades", "profit_factor", "expectancy_pct", "sqn",
                  "exposure_time_pct"}


def rbi(*args: str, db: Path, timeout: float = 240,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "RBI_DB_URL": f"sqlite:///{db}", "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "rbi", *args], capture_output=True, text=True, timeout=timeout,
                          env=full_env, check=False)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli") / "rbi.db"


@pytest.fixture(scope="module")
def example_runs(db: Path) -> list[dict[str, Any]]:
    result = rbi("run", "--json", str(EXAMPLES / "sma_cross.yaml"), str(EXAMPLES / "rsi_script.py"),
                 str(EXAMPLES / "llm_answer.md"), db=db)
    assert result.returncode == 0, result.stderr
    return json_lines(result.stdout)


def test_examples_run_in_all_three_shapes(example_runs: list[dict[str, Any]]) -> None:
    assert [r["name"] for r in example_runs] == ["sma-cross", "rsi-script", "llm-answer"]
    for run in example_runs:
        assert run.keys() >= STABLE_KEYS
        assert run["status"] == "succeeded", run["error"]
        assert run["stats"].keys() >= REQUIRED_STATS
        assert run["stats"]["num_trades"] > 0
        assert run["version"] == 1 and len(run["code_hash"]) == 64
        assert run["peak_memory_bytes"] > 0 and run["execution_time"] > 0
    assert [r["mode"] for r in example_runs] == ["class", "script", "class"]
    # spec.params reached the strategy.
    assert example_runs[0]["params"] == {"fast": 20, "slow": 80}


def test_results_and_show_read_the_store(example_runs: list[dict[str, Any]], db: Path) -> None:
    listed = json.loads(rbi("results", "--json", db=db).stdout)
    assert {r["strategy_name"] for r in listed} >= {"sma-cross", "rsi-script", "llm-answer"}
    best = json.loads(rbi("results", "--json", "--best-by", "sharpe_ratio", db=db).stdout)
    sharpes = [r["sharpe_ratio"] for r in best if r["sharpe_ratio"] is not None]
    assert sharpes == sorted(sharpes, reverse=True)
    only = json.loads(rbi("results", "--json", "--name", "rsi-script", db=db).stdout)
    assert {r["strategy_name"] for r in only} == {"rsi-script"}
    shown = json.loads(rbi("show", "sma-cross", "--json", db=db).stdout)
    assert shown[0]["latest_run"]["stats"]["num_trades"] == example_runs[0]["stats"]["num_trades"]
    table = rbi("results", db=db)
    assert table.returncode == 0 and "sma-cross" in table.stdout
    assert rbi("show", "no-such-strategy", db=db).returncode == 2


def test_failures_are_classified_and_stored(tmp_path: Path, db: Path) -> None:
    (tmp_path / "broken.py").write_text("from backtesting import Strategy\n\nclass S(Strategy)\n    pass\n")
    (tmp_path / "hostile.py").write_text("import subprocess\nsubprocess.run(['id'])\n")
    (tmp_path / "sleepy.py").write_text("import time\n\ntime.sleep(60)\n")
    result = rbi("run", "--json", "--timeout", "2", str(tmp_path / "broken.py"), str(tmp_path / "hostile.py"),
                 str(tmp_path / "sleepy.py"), db=db)
    assert result.returncode == 1
    broken, hostile, sleepy = json_lines(result.stdout)
    assert broken["error"]["type"] == "syntax_error" and broken["error"]["line"] == 3
    assert hostile["error"]["type"] == "validation_error" and hostile["error"]["line"] == 1
    assert "subprocess" in hostile["error"]["message"]
    assert sleepy["error"]["type"] == "timeout"
    assert sleepy["execution_time"] < 30
    failed = json.loads(rbi("results", "--json", "--status", "failed", db=db).stdout)
    assert {"broken", "hostile", "sleepy"} <= {r["strategy_name"] for r in failed}


def test_missing_dataset_is_a_data_error(tmp_path: Path, db: Path) -> None:
    result = rbi("run", "--json", "--data", str(tmp_path / "nope.csv"), str(EXAMPLES / "llm_answer.md"), db=db)
    assert result.returncode == 1
    (run,) = json_lines(result.stdout)
    assert run["error"]["type"] == "data_error" and "nope.csv" in run["error"]["message"]


def test_dead_database_fails_fast_with_masked_password(tmp_path: Path) -> None:
    url = "postgresql+psycopg://rbi:hunter2@127.0.0.1:1/rbi"
    result = rbi("run", "--db", url, str(EXAMPLES / "llm_answer.md"), db=tmp_path / "unused.db", timeout=60)
    assert result.returncode == 3
    assert "results store" in result.stderr and "hunter2" not in result.stderr + result.stdout


def test_malformed_yaml_is_a_usage_error(tmp_path: Path, db: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: rbi.dev/v1alpha1\nkind: BacktestStrategy\nmetadata: {name: Bad}\nspec: {code: x}\n")
    result = rbi("run", str(bad), db=db)
    assert result.returncode == 2 and "DNS-1123" in result.stderr


def test_sandbox_check_reports_primitives(db: Path) -> None:
    result = rbi("sandbox", "check", "--json", db=db)
    report = json.loads(result.stdout)
    names = {c["name"] for c in report["checks"]}
    assert any("seccomp" in n for n in names) and any("namespaces" in n for n in names)
    assert report["ok"] is (result.returncode == 0)


def test_fix_repairs_known_failures_of_generated_code(db: Path) -> None:
    broken = EXAMPLES / "needs_fixes.py"
    plain = rbi("run", "--json", str(broken), db=db)
    (failed,) = json_lines(plain.stdout)
    assert failed["status"] == "failed" and failed["error"]["type"] == "runtime_error"
    assert "size must be" in failed["error"]["message"]

    fixed = rbi("run", "--json", "--fix", str(broken), db=db)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    (run,) = json_lines(fixed.stdout)
    assert run["status"] == "succeeded" and run["stats"]["num_trades"] > 0
    assert [f["fixer"] for f in run["fixes"]] == ["position_size", "entry_price"]
    # The stored version is the code that ran, not the broken original.
    shown = json.loads(rbi("show", "needs-fixes", "--json", db=db).stdout)
    assert shown[-1]["code_hash"] == run["code_hash"] != failed["code_hash"]
