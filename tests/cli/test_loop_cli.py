"""`rbi loop` as a user runs it: a real subprocess, the real openai client, a scripted server on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.cli.test_cli import rbi
from tests.llm.fake_openai import Reply, ScriptedOpenAI
from tests.loop.answers import fenced, research_answer, strategy_code

from rbi.prepare.data import load_ohlcv

NO_LLM = {"OPENAI_BASE_URL": "", "OPENAI_API_KEY": "", "RBI_MODEL": "", "RBI_LLM_CONFIG": ""}


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory, bundled_data: Path) -> Path:
    path = tmp_path_factory.mktemp("data") / "small.csv"
    load_ohlcv(bundled_data).iloc[:3000].to_csv(path)
    return path


@pytest.fixture
def ideas_file(tmp_path: Path) -> Path:
    path = tmp_path / "ideas.txt"
    path.write_text("# one idea\nTrade crossovers of a 10-bar and a 40-bar SMA\n")
    return path


def summary_of(stdout: str) -> dict[str, object]:
    line = next(line for line in stdout.splitlines() if line.startswith("{"))
    data: dict[str, object] = json.loads(line)
    return data


def test_loop_runs_resumes_and_skips(tmp_path: Path, ideas_file: Path, small_data: Path) -> None:
    db = tmp_path / "rbi.db"
    replies = [Reply.text(research_answer("cli-sma")), Reply.text(fenced(strategy_code("CliSma")))]
    with ScriptedOpenAI(*replies) as server:
        env = {**NO_LLM, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-cli-secret-0123456789",
               "RBI_MODEL": "gpt-4o-mini"}
        args = ("loop", str(ideas_file), "--json", "--data", str(small_data), "--method", "grid",
                "--max-trials", "2", "--max-iterations", "1", "--concurrency", "1")
        first = rbi(*args, db=db, env=env, timeout=300)
        assert first.returncode == 0, first.stderr
        summary = summary_of(first.stdout)
        assert summary["succeeded"] == 1 and summary["failed"] == 0
        assert isinstance(summary["prompt_tokens"], int) and summary["prompt_tokens"] > 0
        assert isinstance(summary["cost_usd"], float) and summary["cost_usd"] > 0
        assert len(server.requests) == 2

        # The same file again: nothing to do, no request to the model.
        again = rbi(*args, db=db, env=env, timeout=300)
        assert again.returncode == 0, again.stderr
        assert summary_of(again.stdout)["skipped"] == 1
        assert len(server.requests) == 2
        # Without --json: the table and the summary, for people.
        shown_to_people = rbi(*[a for a in args if a != "--json"], db=db, env=env, timeout=300)
        assert shown_to_people.returncode == 0, shown_to_people.stderr
        table = shown_to_people.stderr
        assert "cli-sma" in table and "succeeded (skipped)" in table and "already processed" in table
        assert "succeeded: 0 of 1 in this run; 1 processed before (skipped)" in table
        assert "failures by class: none" in table and "tokens:" in table and "cost:" in table
    assert "sk-cli-secret" not in first.stdout + first.stderr

    shown = rbi("lineage", "cli-sma", db=db)
    assert shown.returncode == 0 and "v1" in shown.stdout
    # The lineage says which model and prompt wrote the version.
    assert "gpt-4o-mini" in shown.stdout and "research_idea@v1" in shown.stdout


def test_loop_without_an_llm_says_how_to_configure_one(tmp_path: Path, ideas_file: Path) -> None:
    result = rbi("loop", str(ideas_file), db=tmp_path / "rbi.db", env=NO_LLM)
    assert result.returncode == 2
    assert "no LLM is configured" in result.stderr and "OPENAI_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr


def test_loop_rejects_a_bad_config_file_and_a_missing_ideas_file(tmp_path: Path, ideas_file: Path) -> None:
    config = tmp_path / "llm.yaml"
    config.write_text("model: gpt-4o-mini\napi_key: sk-in-a-file\n")
    env = {**NO_LLM, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    bad = rbi("loop", str(ideas_file), "--llm-config", str(config), db=tmp_path / "rbi.db", env=env)
    assert bad.returncode == 2 and "api_key does not belong in a file" in bad.stderr
    missing = rbi("loop", str(tmp_path / "nope.txt"), db=tmp_path / "rbi.db", env=env)
    assert missing.returncode == 2 and "ideas file not found" in missing.stderr


def test_loop_with_a_dead_endpoint_stops_with_a_clear_message(tmp_path: Path, ideas_file: Path) -> None:
    with ScriptedOpenAI() as server:
        base_url = server.base_url  # closed when the block ends
    config = tmp_path / "llm.yaml"
    config.write_text("max_retries: 0\ntimeout: 5\n")
    env = {**NO_LLM, "OPENAI_BASE_URL": base_url}
    result = rbi("loop", str(ideas_file), "--llm-config", str(config), "--json", db=tmp_path / "rbi.db", env=env)
    assert result.returncode == 1, result.stderr
    summary = summary_of(result.stdout)
    assert summary["aborted"] and "cannot connect" in str(summary["aborted"])
    assert summary["failures_by_class"] == {"llm_unreachable": 1}


def test_ctrl_c_stops_the_loop_and_the_rerun_finishes_without_asking_again(
        tmp_path: Path, ideas_file: Path, small_data: Path) -> None:
    db = tmp_path / "rbi.db"
    slow_backtest = Reply(content=fenced(strategy_code("Interrupted")), delay=3.0)
    with ScriptedOpenAI(Reply.text(research_answer("interrupted")), slow_backtest) as server:
        env = {**os.environ, **NO_LLM, "OPENAI_BASE_URL": server.base_url, "RBI_DB_URL": f"sqlite:///{db}",
               "COLUMNS": "200"}
        args = [sys.executable, "-m", "rbi", "loop", str(ideas_file), "--json", "--no-optimize",
                "--data", str(small_data), "--concurrency", "1"]
        process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while len(server.requests) < 2 and time.monotonic() < deadline:  # the backtest call is in flight
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert summary_of(stdout)["interrupted"] is True
    with ScriptedOpenAI() as server:  # nothing scripted: the rerun must not need the model
        env["OPENAI_BASE_URL"] = server.base_url
        rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert server.requests == []
    assert rerun.returncode == 0, rerun.stderr
    assert summary_of(rerun.stdout)["succeeded"] == 1
