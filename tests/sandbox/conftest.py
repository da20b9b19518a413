"""Fixtures for the hostile-strategy suite: one warm executor shared by every test.

Every test here runs code that *tries* to break out of, or exhaust, the local
sandbox. The code runs with static checks off (we test the OS boundary, not
the AST layer) and asserts three things: the run was stopped, it got the right
failure class, and the host is untouched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rbi.engine import LocalExecutor

from .hostile import Ran, make_run, our_worker_pids

# The worker processes of the shared executor, as started; the last test checks they all survived.
STARTED_WORKERS: set[int] = set()


@pytest.fixture(scope="session")
def dataset_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where prepare() materialises the bundled dataset, instead of the user's ~/.rbi."""
    return tmp_path_factory.mktemp("rbi-cache")


@pytest.fixture(scope="session")
def executor(dataset_cache: Path) -> Iterator[LocalExecutor]:
    """One warm pool for the whole suite: the last test checks that it survived everything.

    No skip when the sandbox is unavailable: a sandbox that cannot start must fail loudly here.
    """
    with LocalExecutor(workers=2) as ex:
        # Start both workers now (the second one spawns only while the first is busy), so no
        # test's timing includes a worker start-up.
        nap = make_run("import time\ntime.sleep(1)", cache=dataset_cache)
        for _ in range(3):
            list(ex.execute_many([nap, nap]))
            if len(our_worker_pids(pool=ex.pool)) == ex.workers:
                break
        STARTED_WORKERS.update(our_worker_pids(pool=ex.pool))
        yield ex


@pytest.fixture
def run_code(executor: LocalExecutor, dataset_cache: Path) -> Callable[..., Ran]:
    """run_code(code, mode="script", **limit_overrides) -> Ran, on the shared executor."""

    def run(code: str, *, mode: str = "script", **limits: object) -> Ran:
        prepared = make_run(code, cache=dataset_cache, mode=mode, **limits)
        started = time.monotonic()
        outcome = executor.execute(prepared)
        return Ran(outcome, time.monotonic() - started)

    return run
