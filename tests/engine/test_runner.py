"""The runner in-process, on the real bundled data: both modes, every strategy-side failure class."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from rbi import runner
from rbi.prepare.data import load_ohlcv

SMA = textwrap.dedent("""
    import talib
    from backtesting import Strategy
    from backtesting.lib import crossover

    class SmaCross(Strategy):
        fast = 10
        slow = 30

        def init(self):
            self.a = self.I(talib.SMA, self.data.Close, self.fast)
            self.b = self.I(talib.SMA, self.data.Close, self.slow)

        def next(self):
            if crossover(self.a, self.b):
                self.position.close()
                self.buy(size=0.5)
            elif crossover(self.b, self.a):
                self.position.close()
""")


@pytest.fixture(scope="module")
def frame(bundled_data: Path) -> Any:
    return load_ohlcv(bundled_data)


def _run(tmp_path: Path, code: str, frame: Any = None, **request: Any) -> dict[str, Any]:
    path = tmp_path / "strategy.py"
    path.write_text(code)
    return runner.execute(runner.RunRequest(code_path=str(path), **{"mode": "class", **request}), frame=frame)


def test_class_mode_runs_and_sets_params(tmp_path: Path, frame: Any) -> None:
    default = _run(tmp_path, SMA, frame)
    tuned = _run(tmp_path, SMA, frame, params={"fast": 20, "slow": 60})
    assert default["error"] is None and tuned["error"] is None
    assert default["params"] == {"fast": 10, "slow": 30}
    assert tuned["params"] == {"fast": 20, "slow": 60}
    assert len(default["facts"]["trades"]) > len(tuned["facts"]["trades"]) > 0
    assert default["strategy_class"] == "SmaCross"
    # Class mode leaves the statistics and the series to the host, which recomputes them from the facts.
    assert default["stats"] is None and default["series"] is True and "equity_curve" not in default
    assert default["facts"]["equity_final"] > 0
    # The report survives strict JSON encoding: no NaN anywhere.
    json.loads(runner.encode_report(default))


def test_script_mode_reads_are_served_from_the_dataset(tmp_path: Path, bundled_data: Path) -> None:
    from rbi.prepare.data import materialize_csv

    raw_csv = materialize_csv(bundled_data, tmp_path / "cache")
    code = (Path(__file__).resolve().parents[2] / "examples" / "strategies" / "rsi_script.py").read_text()
    report = _run(tmp_path, code, mode="script", raw_data_path=str(raw_csv))
    assert report["error"] is None
    assert report["redirected_reads"] == ["/Users/moondev/Documents/src/data/rbi/BTC-USD-15m.csv"]
    assert report["stats"]["num_trades"] > 0
    assert report["params"]["rsi_period"] == 14


def test_repeated_warnings_are_collapsed(tmp_path: Path, frame: Any, capsys: pytest.CaptureFixture[str]) -> None:
    # Buying a whole unit with too little cash: backtesting.py warns on every bar.
    code = SMA.replace("self.buy(size=0.5)", "self.buy(size=1)")
    report = _run(tmp_path, code, frame, backtest={"cash": 100})
    counts = {w["location"]: w["count"] for w in report["warnings"]}
    assert max(counts.values()) > 100
    assert capsys.readouterr().err.count("Warning") <= runner.SHOWN_PER_WARNING * len(counts) * 2


@pytest.mark.parametrize(("code", "kind", "line", "detail"), [
    ("x = 1\ndef broken(:\n", "syntax_error", 2, None),
    ("import numpy\nimport pandas_tx_missing\n", "import_error", 2, "pandas_tx_missing"),
    ("from backtesting import Strategy\nclass S(Strategy):\n    def init(self):\n        self.x = 1 / 0\n"
     "    def next(self): pass\n", "runtime_error", 4, "ZeroDivisionError"),
    ("from backtesting import Strategy\nclass S(Strategy):\n    def init(self):\n"
     "        self.v = self.data.df['Adj Close']\n    def next(self): pass\n", "data_error", 4, "KeyError"),
    ("from backtesting import Strategy\nclass S(Strategy):\n    def init(self):\n"
     "        self.oi = self.data.open_interest\n    def next(self): pass\n", "data_error", 4, "AttributeError"),
    ("x = bytearray(1)\nraise MemoryError()\n", "memory_limit", 2, "MemoryError"),
    ("import errno\nraise OSError(errno.ENOSPC, 'No space left on device')\n", "disk_limit", 2, "OSError"),
    ("x = 1\n", "runtime_error", None, "LookupError"),
    ("import pandas as pd\ndf = pd.read_csv('/nowhere/prices.csv')\n", "data_error", 2, "FileNotFoundError"),
    ("open('/nowhere/config.json').read()\n", "runtime_error", 1, "FileNotFoundError"),
])
def test_failures_are_classified_with_lines(tmp_path: Path, frame: Any, code: str, kind: str, line: int | None,
                                            detail: str | None) -> None:
    report = _run(tmp_path, code, frame)
    error = report["error"]
    assert error is not None, report
    assert error["type"] == kind
    assert error["line"] == line
    if detail:
        assert error["detail"] == detail


def test_unknown_backtest_option_is_reported(tmp_path: Path, frame: Any) -> None:
    report = _run(tmp_path, SMA, frame, backtest={"leverage": 10})
    assert report["error"]["type"] == "runtime_error"
    assert "leverage" in report["error"]["message"]


def test_script_sys_exit_zero_is_not_a_failure(tmp_path: Path) -> None:
    report = _run(tmp_path, "import sys\nprint('done')\nsys.exit(0)\n", mode="script")
    assert report["error"] is None and report["stats"] is None


def test_result_file_refuses_links_and_fifos(tmp_path: Path) -> None:
    import os
    import time

    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "result.json"
    link.symlink_to(target)
    with pytest.raises(OSError):
        runner.write_report_file(str(link), {"ok": True})
    assert target.read_text() == "keep me"

    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(OSError):
        runner.write_report_file(str(fifo), {"ok": True})
    assert time.monotonic() - started < 5

    regular = tmp_path / "ok.json"
    runner.write_report_file(str(regular), {"value": float("nan"), "n": 1})
    assert json.loads(regular.read_text()) == {"value": None, "n": 1}
