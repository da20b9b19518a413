"""A zero-trade run says why in one line, from facts only the run has (rbi.diagnostics), without a model.

Each `files/fixes/notrades_*` file makes no trades for a different reason; run through the real sandbox
on the bundled data, its outcome is `no_trades` (not a failure) and `no_trades_reason` names that reason.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rbi.diagnostics import clean, explain
from rbi.engine import LocalExecutor, prepare
from rbi.spec import load_spec
from rbi.store import ResultStore

FILES = Path(__file__).parent / "files" / "fixes"
REPO = Path(__file__).resolve().parents[2]

# file -> words the one-line reason must hold
REASONS: dict[str, tuple[str, ...]] = {
    "notrades_whole_units.py": ("orders were cancelled for insufficient cash", "size=100", "whole units",
                                "cash of 1,000,000"),
    "notrades_small_cash.py": ("orders were cancelled for insufficient cash", "cash of 10,000",
                               "less than one whole unit"),
    "notrades_never_together.py": ("buy() and sell() were never called", "never true together", "31066 bars"),
    "notrades_nan_indicator.py": ("never called", "zscore(C) is NaN on all 31066 bars"),
    "notrades_short_data.py": ("data is too short", "SMA(C,192) needs 192 bars", "has 174"),
    "notrades_last_bar.py": ("1 orders were placed and none filled", "final bar"),
    "notrades_limit_never_reached.py": ("1 orders were placed and none filled", "1 still waiting",
                                        "limit or stop prices were never reached"),
}


@pytest.fixture(scope="module")
def executor() -> Iterator[LocalExecutor]:
    with LocalExecutor(workers=1) as running:
        yield running


@pytest.mark.parametrize("name", sorted(REASONS))
def test_zero_trades_say_why(name: str, executor: LocalExecutor, tmp_path: Path) -> None:
    outcome = executor.execute(prepare(load_spec(FILES / name), cache_dir=tmp_path))
    assert outcome.error is None, outcome.error
    assert str(outcome.status) == "no_trades" and outcome.stats["num_trades"] == 0
    reason = outcome.no_trades_reason
    assert reason is not None and "\n" not in reason and len(reason) < 300
    for words in REASONS[name]:
        assert words in reason, reason
    assert outcome.to_json()["no_trades_reason"] == reason


def test_a_trading_run_has_no_reason(executor: LocalExecutor, tmp_path: Path) -> None:
    outcome = executor.execute(prepare(load_spec(REPO / "examples" / "strategies" / "sma_cross.yaml"),
                                       cache_dir=tmp_path))
    assert str(outcome.status) == "succeeded" and outcome.no_trades_reason is None


def test_rbi_run_json_shows_and_stores_the_reason(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env["RBI_HOME"] = str(tmp_path)
    db = f"sqlite:///{tmp_path / 'rbi.db'}"
    done = subprocess.run([sys.executable, "-m", "rbi", "run", "--db", db, str(FILES / "notrades_whole_units.py"),
                           "--json"], env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    shown = json.loads(done.stdout.strip().splitlines()[-1])
    assert shown["status"] == "no_trades" and "insufficient cash" in shown["no_trades_reason"]
    table = subprocess.run([sys.executable, "-m", "rbi", "run", "--db", db, str(FILES / "notrades_short_data.py")],
                           env={**env, "COLUMNS": "100"}, capture_output=True, text=True, timeout=600, check=False)
    assert "no trades: buy() and sell() were never called: the data is too short" in " ".join(table.stdout.split())
    with ResultStore(db) as store:
        stored = store.get_run(shown["run_id"])
    assert stored is not None and stored.stats["no_trades_reason"] == shown["no_trades_reason"]


def test_the_job_runner_reports_diagnostics(tmp_path: Path) -> None:
    # `python -m rbi.runner` (what a Job runs) is the same runner: the facts come back in its result.
    code = tmp_path / "strategy.py"
    code.write_text((FILES / "notrades_nan_indicator.py").read_text())
    request = {"mode": "class", "code_path": str(code), "data_path": "bundled:BTC-USD-15m", "include_series": False}
    (tmp_path / "request.json").write_text(json.dumps(request))
    subprocess.run([sys.executable, "-m", "rbi.runner", "--request", str(tmp_path / "request.json"), "--result",
                    str(tmp_path / "result.json"), "--scratch", str(tmp_path)], check=True, timeout=300,
                   capture_output=True)
    report = json.loads((tmp_path / "result.json").read_text())
    facts = clean(report["diagnostics"])
    assert facts is not None and facts["buy_calls"] == 0 and facts["bars"] == 31066
    assert facts["indicators"][0]["nan"] == 1.0
    assert "zscore(C) is NaN on all 31066 bars" in explain(facts)


@pytest.mark.parametrize("raw", [
    None, "x", [], {"v": 2}, {"v": True},
    {"v": 1, "bars": -1, "buy_calls": 10**12, "cash": math.inf, "indicators": "many"},
    {"v": 1, "bars": 5, "indicators": [{"name": "a\x1b[31m" * 50, "nan": 7, "warmup": 1}, "junk",
                                      {"name": None, "nan": 0.5, "warmup": -3}]},
])
def test_untrusted_diagnostics_are_bounded(raw: object) -> None:
    cleaned = clean(raw)
    if cleaned is None:
        assert not (isinstance(raw, dict) and type(raw.get("v")) is int and raw["v"] == 1)
        return
    assert cleaned["bars"] in (None, 5) and cleaned["buy_calls"] is None and cleaned["cash"] is None
    assert cleaned["indicators"] == []
    assert isinstance(explain(cleaned), str)


def test_indicator_names_are_printable_and_short() -> None:
    cleaned = clean({"v": 1, "bars": 10, "buy_calls": 0, "sell_calls": 0,
                     "indicators": [{"name": "E\x1b[2J" + "x" * 500, "nan": 1.0, "warmup": 10}]})
    assert cleaned is not None
    [indicator] = cleaned["indicators"]
    assert "\x1b" not in indicator["name"] and len(indicator["name"]) <= 80
