"""Helpers for the hostile-strategy suite: run code in the sandbox and observe the host around it."""

from __future__ import annotations

import os
import textwrap
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rbi.engine import PreparedRun, prepare
from rbi.outcome import FailureClass, RunOutcome, Status
from rbi.sandbox.jail import SANDBOX_UID, STANDBY_NAME
from rbi.sandbox.limits import SandboxLimits
from rbi.spec import StrategySpec

# Small limits so bombs hit them quickly on a 2-core machine.
LIMITS = SandboxLimits(timeout_seconds=10, memory_bytes=512 * 2**20, disk_bytes=20 * 10**6)
# Failure classes a strategy can earn; sandbox_error means the platform broke.
STRATEGY_CLASSES = frozenset(FailureClass) - {FailureClass.SANDBOX_ERROR}


@dataclass(frozen=True, slots=True)
class Ran:
    """One finished run, plus what the host measured around it."""

    outcome: RunOutcome
    wall: float

    @property
    def kind(self) -> FailureClass | None:
        return self.outcome.error.type if self.outcome.error else None

    @property
    def stdout(self) -> str:
        return self.outcome.stdout_tail

    @property
    def output(self) -> str:
        return self.outcome.stdout_tail + self.outcome.stderr_tail

    def describe(self) -> str:
        """Everything useful for an assertion message."""
        error = self.outcome.error
        return (
            f"status={self.outcome.status} kind={error.type if error else None} "
            f"detail={error.detail if error else None} message={error.message if error else None!r} "
            f"wall={self.wall:.2f}s\n--- stdout tail ---\n{self.outcome.stdout_tail[-2000:]}"
            f"\n--- stderr tail ---\n{self.outcome.stderr_tail[-2000:]}"
        )


def make_run(code: str, *, cache: Path, mode: str = "script", static_checks: bool = False,
             **limits: object) -> PreparedRun:
    spec = StrategySpec(name="hostile", code=textwrap.dedent(code), mode=mode, source="python",
                        limits=replace(LIMITS, **limits))  # type: ignore[arg-type]
    return prepare(spec, static_checks=static_checks, cache_dir=cache)


# --------------------------------------------------------------------------- host observations


@dataclass(frozen=True, slots=True)
class HostProcess:
    pid: int
    ppid: int
    uid: int
    description: str


def host_processes() -> dict[int, HostProcess]:
    """Every process on the host, as root sees it."""
    found: dict[int, HostProcess] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue  # exited while we looked
        uid = fields.get("Uid", "").split()
        description = " ".join(f"{key}={fields.get(key, '?').strip()}" for key in ("State", "Name", "NSpid"))
        found[int(entry)] = HostProcess(
            pid=int(entry), ppid=int(fields.get("PPid", "0").strip() or 0), uid=int(uid[0]) if uid else -1,
            description=f"{description} cmdline={cmdline[:80]!r}",
        )
    return found


def sandbox_uid_processes() -> dict[int, str]:
    """Host processes whose real uid is the sandbox uid: pid -> a description for messages."""
    return {p.pid: p.description for p in host_processes().values() if p.uid == SANDBOX_UID}


def our_worker_pids(table: dict[int, HostProcess] | None = None, *, pool: Any = None) -> set[int]:
    """The warm workers this test process started (other test runs on the machine have their own);
    with `pool`, only that pool's (a pool another test module has not closed yet is not this suite's)."""
    table = table if table is not None else host_processes()
    pids = {p.pid for p in table.values() if p.ppid == os.getpid() and "rbi.sandbox.worker" in p.description}
    if pool is not None:
        pids &= {worker.process.pid for worker in list(pool._workers)}
    return pids


def _below(pid: int, ancestors: set[int], table: dict[int, HostProcess]) -> bool:
    for _ in range(64):
        process = table.get(pid)
        if process is None or process.ppid in (0, pid):
            return False
        if process.ppid in ancestors:
            return True
        pid = process.ppid
    return False


def is_idle_standby(process: HostProcess, table: dict[int, HostProcess]) -> bool:
    """The one child a worker readies for its next run (rbi.sandbox.worker.Standbys): it has run no code.

    Its S and P carry the standby name until P is sent a run; P renames itself then, and S stays
    below the worker only as long as that run lasts (the worker reaps it).
    """
    if f"Name={STANDBY_NAME} " not in process.description + " ":
        return False
    parent = table.get(process.ppid)
    # S is the worker's child; P is S's. Neither is of the sandbox uid: the drop comes after the claim.
    return process.uid != SANDBOX_UID and parent is not None and (
        "rbi.sandbox.worker" in parent.description or f"Name={STANDBY_NAME} " in parent.description + " ")


def leftover_sandbox_processes(before: dict[int, str], *, wait: float = 0.0) -> dict[int, str]:
    """Processes a finished run left behind, still there after `wait` seconds.

    That is anything below one of *our* workers (a worker has no child between
    runs), and any process of the sandbox uid orphaned to the host's init, not
    counting what was there in `before`. Runs of another test session on the
    same machine are below their own workers and are not counted.

    The default is strict: when execute() returns, every process of the run must
    be gone *and reaped*. A zombie left for the host's init to reap counts against
    the process limit of the sandbox uid, and stays forever where PID 1 does not
    reap (a container running Python as PID 1).
    """
    deadline = time.monotonic() + wait
    while True:
        table = host_processes()
        workers = our_worker_pids(table)

        extra = {
            p.pid: p.description for p in table.values()
            if p.pid not in before and not is_idle_standby(p, table)
            and (_below(p.pid, workers, table) or (p.uid == SANDBOX_UID and p.ppid == 1))
        }
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.1)


def assert_failed_as(ran: Ran, expected: FailureClass | set[FailureClass]) -> None:
    wanted = expected if isinstance(expected, set) else {expected}
    assert ran.outcome.status is Status.FAILED, ran.describe()
    assert ran.kind in wanted, ran.describe()


def assert_ran_to_the_end(ran: Ran) -> None:
    """The hostile script finished on its own (so every probe ran) and ran no backtest."""
    assert "PROBES-DONE" in ran.stdout, ran.describe()
    assert_failed_as(ran, FailureClass.RUNTIME_ERROR)
    assert ran.outcome.error is not None and ran.outcome.error.detail == "no_backtest", ran.describe()


# A script-mode optimisation on 2,000 served bars: it forks a process pool and puts the data in POSIX
# shared memory (/dev/shm), so it needs both of what a hostile neighbour or a too-tight jail takes.
OPTIMIZE_SCRIPT = """
import numpy as np
import pandas as pd
import talib
from backtesting import Backtest, Strategy
from backtesting.lib import crossover

# The served dataset (a missing path is served it); invented bars would fail the host's integrity check.
raw = pd.read_csv("/Users/someone/data/BTC-USD-15m.csv")
raw.columns = raw.columns.str.strip().str.capitalize()
frame = raw.set_index(pd.to_datetime(raw["Datetime"]))[["Open", "High", "Low", "Close", "Volume"]].iloc[:2000]

class Cross(Strategy):
    fast = 5
    slow = 20

    def init(self):
        self.a = self.I(talib.SMA, self.data.Close, self.fast)
        self.b = self.I(talib.SMA, self.data.Close, self.slow)

    def next(self):
        if crossover(self.a, self.b):
            self.buy(size=0.5)
        elif crossover(self.b, self.a):
            self.position.close()

stats = Backtest(frame, Cross, cash=100_000).optimize(fast=[5, 10], slow=[20, 30])
print(stats)
"""

SMA_CLASS_STRATEGY = """
import talib
from backtesting import Strategy
from backtesting.lib import crossover


class SmaCross(Strategy):
    fast = 10
    slow = 30

    def init(self):
        self.sma_fast = self.I(talib.SMA, self.data.Close, self.fast)
        self.sma_slow = self.I(talib.SMA, self.data.Close, self.slow)

    def next(self):
        if crossover(self.sma_fast, self.sma_slow):
            self.buy(size=0.5)
        elif crossover(self.sma_slow, self.sma_fast):
            self.position.close()
"""
