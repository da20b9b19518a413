"""After every hostile run in this directory, the shared worker pool still runs normal strategies.

This module sorts last on purpose: it uses the same session-wide executor as
the hostile tests, so a worker that was wedged, killed or polluted by them
shows up here.
"""

from __future__ import annotations

from collections.abc import Callable

from rbi.engine import LocalExecutor
from rbi.outcome import Status

from .conftest import STARTED_WORKERS
from .hostile import OPTIMIZE_SCRIPT, SMA_CLASS_STRATEGY, Ran, leftover_sandbox_processes, our_worker_pids

RunCode = Callable[..., Ran]


def test_optimize_uses_processes_and_shared_memory(run_code: RunCode) -> None:
    """Not hostile: Backtest.optimize forks a pool and uses /dev/shm, both of which the jail must
    allow (the size cap and the pids limit still apply)."""
    ran = run_code(OPTIMIZE_SCRIPT, timeout_seconds=60)
    assert ran.outcome.status is Status.SUCCEEDED, ran.describe()
    assert ran.outcome.stats["num_trades"] > 0


def test_pool_survives_the_hostile_suite(run_code: RunCode, executor: LocalExecutor) -> None:
    """The worker pool survived every bomb and escape attempt: a plain SMA crossover on the
    bundled dataset still succeeds, with trades, and leaves no process behind."""
    ran = run_code(SMA_CLASS_STRATEGY, mode="class", timeout_seconds=60, memory_bytes=2 * 2**30)
    assert ran.outcome.status is Status.SUCCEEDED, ran.describe()
    assert ran.outcome.stats["num_trades"] > 0
    assert ran.outcome.error is None
    assert leftover_sandbox_processes({}) == {}
    # The very same worker processes as at the start: none died and none was replaced.
    assert len(STARTED_WORKERS) == executor.pool.size == 2
    assert our_worker_pids(pool=executor.pool) == STARTED_WORKERS
