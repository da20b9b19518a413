"""The standby jail: a worker readies its next child while the host digests the last result.

Each test has its own one-worker pool, so which child serves which run is known: the report
of a run says whether a standby served it. What must hold: a standby serves the next run on
the same data; a run on other data gets a fresh child and the right rows; the claimed run's
own limits apply, not those of the run the standby was built after; a standby that died
while waiting costs nothing; and a standby has run no code (it is not the sandbox user yet).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from rbi.engine import LocalExecutor, PreparedRun
from rbi.outcome import FailureClass, Status
from rbi.prepare.data import load_ohlcv

from .hostile import SANDBOX_UID, host_processes, is_idle_standby, make_run, our_worker_pids

PRINT_ROWS = """
from backtesting import Strategy


class Rows(Strategy):
    def init(self):
        print("rows", len(self.data.df))

    def next(self):
        if len(self.data) == 100:
            self.buy()
"""


@pytest.fixture
def pool() -> Iterator[tuple[LocalExecutor, list[dict[str, Any]]]]:
    """A one-worker executor and the raw worker reports of its runs, in order."""
    with LocalExecutor(workers=1) as executor:
        reports: list[dict[str, Any]] = []
        submit = executor.pool.submit

        def keep(message: dict[str, Any], *, timeout: float) -> dict[str, Any]:
            report = submit(message, timeout=timeout)
            reports.append(report)
            return report

        executor.pool.submit = keep  # type: ignore[method-assign]
        yield executor, reports


def _standbys(worker: int) -> list[int]:
    """The idle standby processes below `worker` (S and its P), once it has readied them."""
    deadline = time.monotonic() + 10
    while True:
        table = host_processes()
        found = [p.pid for p in table.values() if is_idle_standby(p, table)
                 and (p.ppid == worker or table.get(p.ppid, p).ppid == worker)]
        if len(found) == 2 or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _run(executor: LocalExecutor, prepared: PreparedRun) -> Any:
    outcome = executor.execute(prepared)
    assert outcome.error is None, outcome.error
    return outcome


def test_the_next_run_on_the_same_data_is_served_by_the_standby(
        pool: tuple[LocalExecutor, list[dict[str, Any]]], tmp_path: Path) -> None:
    executor, reports = pool
    prepared = make_run(PRINT_ROWS, cache=tmp_path, mode="class")
    first, second = _run(executor, prepared), _run(executor, prepared)
    assert [r["standby"] for r in reports] == [False, True]
    assert first.stdout_tail == second.stdout_tail and "rows" in first.stdout_tail


def test_a_run_on_other_data_gets_a_fresh_child_and_its_own_rows(
        pool: tuple[LocalExecutor, list[dict[str, Any]]], tmp_path: Path) -> None:
    executor, reports = pool
    bundled = make_run(PRINT_ROWS, cache=tmp_path, mode="class")
    rows = len(load_ohlcv(bundled.data_file))
    short = tmp_path / "short.csv"
    load_ohlcv(bundled.data_file).iloc[:500].rename_axis("Datetime").to_csv(short)
    other = replace(bundled, data_file=str(short), raw_data_file=str(short))
    outcomes = [_run(executor, run) for run in (bundled, other, other, bundled)]
    assert [r["standby"] for r in reports] == [False, False, True, False]
    assert [o.stdout_tail.split()[-1] for o in outcomes] == [str(rows), "500", "500", str(rows)]


def test_the_claimed_run_gets_its_own_limits(pool: tuple[LocalExecutor, list[dict[str, Any]]],
                                             tmp_path: Path) -> None:
    """The standby was built after a run with 1 GiB; the next run asks for 256 MiB and must get it."""
    executor, reports = pool
    _run(executor, make_run(PRINT_ROWS, cache=tmp_path, mode="class", memory_bytes=2**30))
    hog = make_run("blocks = [bytearray(64 * 2**20) for _ in range(12)]\nprint(len(blocks))", cache=tmp_path,
                   memory_bytes=256 * 2**20)
    outcome = executor.execute(hog)
    assert reports[-1]["standby"] is True
    assert outcome.error is not None and outcome.error.type is FailureClass.MEMORY_LIMIT, outcome


def test_a_standby_that_died_waiting_costs_nothing(pool: tuple[LocalExecutor, list[dict[str, Any]]],
                                                   tmp_path: Path) -> None:
    executor, reports = pool
    prepared = make_run(PRINT_ROWS, cache=tmp_path, mode="class")
    _run(executor, prepared)
    [worker] = our_worker_pids(pool=executor.pool)
    standby = _standbys(worker)
    assert len(standby) == 2, "the worker readied no standby after its run"
    for pid in standby:
        os.kill(pid, signal.SIGKILL)
    outcome = executor.execute(prepared)
    assert outcome.status is Status.SUCCEEDED, outcome.error
    assert reports[-1]["standby"] is False


def test_a_standby_has_run_no_code(pool: tuple[LocalExecutor, list[dict[str, Any]]], tmp_path: Path) -> None:
    """While it waits it is not the sandbox user yet and holds no strategy file: the drop and the code
    come with the claim, so nothing of a run can happen in it before."""
    executor, _ = pool
    _run(executor, make_run(PRINT_ROWS, cache=tmp_path, mode="class"))
    [worker] = our_worker_pids(pool=executor.pool)
    standby = _standbys(worker)
    assert len(standby) == 2
    table = host_processes()
    assert all(table[pid].uid != SANDBOX_UID for pid in standby)
    inner = next(pid for pid in standby if table[pid].ppid != worker)
    assert os.path.isdir(f"/proc/{inner}/root/sandbox"), "P has not built its root yet"
    assert not os.path.exists(f"/proc/{inner}/root/sandbox/strategy.py")
