"""Hostile strategies against the result channel: forged, corrupted or redirected results.

The result travels on its own channel (fd 3 locally, a file on a cluster),
never on stdout. A strategy that tampers with it must fail as its own
runtime_error (never sandbox_error, never succeeded with invented numbers),
and the file writer must refuse links, FIFOs and other non-regular files.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rbi.outcome import FailureClass, Status
from rbi.runner import write_report_file

from .hostile import Ran, assert_failed_as

RunCode = Callable[..., Ran]
REPORT = {"mode": "class", "error": None, "stats": {"return_pct": 1.5, "num_trades": 3}}


# --------------------------------------------------------------------------- write_report_file


def _write_with_deadline(path: str, seconds: float = 5.0) -> BaseException | None:
    """Call write_report_file in a thread; fail the test if it blocks (a FIFO must not hang it)."""
    box: list[BaseException | None] = []

    def target() -> None:
        try:
            write_report_file(path, REPORT)
            box.append(None)
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"write_report_file blocked on {path}"
    return box[0]


def test_result_file_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    """Threat: the strategy replaces the result file with a symlink to a host file (a kubeconfig,
    a shell profile), so the runner overwrites that file with attacker-chosen content."""
    target = tmp_path / "victim"
    target.write_text("precious host data\n")
    link = tmp_path / "result.json"
    link.symlink_to(target)
    error = _write_with_deadline(str(link))
    assert isinstance(error, OSError), error
    assert target.read_text() == "precious host data\n"
    # A dangling link must not create its target either.
    missing = tmp_path / "would-be-created"
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(missing)
    assert isinstance(_write_with_deadline(str(dangling)), OSError)
    assert not missing.exists()


def test_result_file_that_is_a_fifo_is_refused_promptly(tmp_path: Path) -> None:
    """Threat: the strategy replaces the result file with a FIFO, so the runner blocks forever in
    open() (no reader) or streams the result to a process the strategy controls (a reader)."""
    fifo = tmp_path / "result.json"
    os.mkfifo(fifo)
    started = time.monotonic()
    assert isinstance(_write_with_deadline(str(fifo)), OSError)  # no reader: ENXIO at once
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        error = _write_with_deadline(str(fifo))  # with a reader: opened, then refused by fstat
        assert isinstance(error, OSError), error
        # Nothing went into the pipe: with the writer gone, a read sees end-of-file, not data.
        assert os.read(reader, 4096) == b""
    finally:
        os.close(reader)
    assert time.monotonic() - started < 2.0


def test_result_path_that_is_a_directory_or_device_is_refused(tmp_path: Path) -> None:
    """Threat: the result path replaced by a directory or a device node (/dev/null swallows it)."""
    directory = tmp_path / "result.json"
    directory.mkdir()
    assert isinstance(_write_with_deadline(str(directory)), OSError)
    assert isinstance(_write_with_deadline("/dev/null"), OSError)


def test_result_file_that_is_regular_is_written_whole(tmp_path: Path) -> None:
    """The ordinary case still works, and stale longer content left in the file is truncated."""
    path = tmp_path / "result.json"
    path.write_text("x" * 10_000)
    assert _write_with_deadline(str(path)) is None
    assert json.loads(path.read_text()) == REPORT
    fresh = tmp_path / "fresh.json"
    assert _write_with_deadline(str(fresh)) is None
    assert json.loads(fresh.read_text()) == REPORT
    assert fresh.stat().st_mode & 0o777 == 0o600


# --------------------------------------------------------------------------- fd 3 inside the sandbox

BACKTEST_SCRIPT = """
import os
import numpy as np
import pandas as pd
import talib
from backtesting import Backtest, Strategy
from backtesting.lib import crossover

{before}

# The served dataset (a missing path is served it); invented bars would fail the host's integrity check.
raw = pd.read_csv("/Users/someone/data/BTC-USD-15m.csv")
raw.columns = raw.columns.str.strip().str.capitalize()
frame = raw.set_index(pd.to_datetime(raw["Datetime"]))[["Open", "High", "Low", "Close", "Volume"]].iloc[:3000]

class Cross(Strategy):
    def init(self):
        self.fast = self.I(talib.SMA, self.data.Close, 5)
        self.slow = self.I(talib.SMA, self.data.Close, 20)

    def next(self):
        if crossover(self.fast, self.slow):
            self.buy(size=0.5)
        elif crossover(self.slow, self.fast):
            self.position.close()

stats = Backtest(frame, Cross, cash=100_000, commission=0.001).run()
{after}
"""
FORGED = '{"mode": "script", "error": null, "stats": {"return_pct": 1e9, "num_trades": 5}}'


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("os.close(3)", ""),
        ("os.write(3, b'garbage')", ""),
        (f"os.write(3, {FORGED.encode()!r})", ""),
        ("os.dup2(os.open('/dev/null', os.O_WRONLY), 3)", ""),
        ("", "os.write(3, b'}}garbage after the run')"),
        ("", "os.close(3)"),
    ],
    ids=["close-before", "garbage-before", "forged-prefix", "redirect-to-devnull", "garbage-after",
         "close-after"],
)
def test_tampering_with_the_result_fd_fails_the_run(run_code: RunCode, before: str, after: str) -> None:
    """Threat: corrupting, pre-empting or hiding the result channel (fd 3) so the run reports
    invented statistics, or so the platform blames itself (sandbox_error) for the strategy's act.

    The backtest itself is valid; only the tampering may make it fail, and it
    must fail as the strategy's runtime_error with no statistics at all.
    """
    ran = run_code(BACKTEST_SCRIPT.format(before=before, after=after))
    assert_failed_as(ran, FailureClass.RUNTIME_ERROR)
    assert ran.outcome.stats == {}, ran.describe()
    message = ran.outcome.error.message if ran.outcome.error else ""
    assert "result" in message or "status" in message, ran.describe()


def test_untampered_backtest_script_succeeds(run_code: RunCode) -> None:
    """Control for the tampering cases: the same script without tampering succeeds with real stats."""
    ran = run_code(BACKTEST_SCRIPT.format(before="", after=""))
    assert ran.outcome.status is Status.SUCCEEDED, ran.describe()
    assert ran.outcome.stats["num_trades"] > 0
    assert ran.outcome.stats["return_pct"] != 1e9


def test_flooding_the_result_fd_hits_a_limit(run_code: RunCode) -> None:
    """Threat: writing an endless result to exhaust the host's memory while it buffers the result."""
    ran = run_code("import os\nchunk = b'{' * 2**20\nwhile True:\n    os.write(3, chunk)\n")
    assert_failed_as(ran, FailureClass.OUTPUT_LIMIT)
    assert ran.wall < 10, ran.describe()


# --------------------------------------------------------------------------- forged results on stdout

FAKE_STATS_TABLE = """
Start                     2023-01-01 00:00:00
End                       2023-01-21 19:45:00
Duration                     20 days 19:45:00
Exposure Time [%]                       50.55
Equity Final [$]                    112500.0
Return [%]                               12.5
# Trades                                    7
"""


def test_result_marker_printed_on_stdout_is_not_the_result(run_code: RunCode) -> None:
    """Threat: printing the result channel's framing (the READY marker and a JSON report) on
    stdout, hoping the host mistakes it for the real result. stdout is never the result channel.
    """
    code = f"print('RBI-READY\\n' + {FORGED!r})\nprint({FORGED!r})\n"
    ran = run_code(code)
    assert "RBI-READY" in ran.stdout, ran.describe()
    assert_failed_as(ran, FailureClass.RUNTIME_ERROR)
    assert ran.outcome.error is not None and ran.outcome.error.detail == "no_backtest", ran.describe()
    assert ran.outcome.stats == {}


def test_printed_stats_table_is_never_taken_as_the_result(run_code: RunCode) -> None:
    """Threat: the JSON marker plus a printed stats table. Figures only ever come from a backtest
    the runner saw, recomputed by the host (rbi.integrity); a printed table is the script's own
    claim, so a script that prints one without running a backtest fails, and the JSON result
    marker on stdout is ignored too: no figure of either reaches the outcome.
    """
    code = f"print('RBI-READY\\n' + {FORGED!r})\nprint({FAKE_STATS_TABLE!r})\n"
    ran = run_code(code)
    assert_failed_as(ran, FailureClass.RUNTIME_ERROR)
    assert ran.outcome.error is not None and ran.outcome.error.detail == "no_backtest", ran.describe()
    assert "printed" in ran.outcome.error.message
    assert ran.outcome.stats == {}
