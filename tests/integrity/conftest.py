"""One warm sandbox for the forgery tests: every forged run goes through the real LocalExecutor."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rbi.engine import LocalExecutor, prepare
from rbi.outcome import RunOutcome
from rbi.sandbox.limits import SandboxLimits
from rbi.spec import StrategySpec

ROWS = 6000  # class-mode runs use the first 6,000 bars of the bundled data: fast, still real
LIMITS = SandboxLimits(timeout_seconds=120, memory_bytes=1024 * 2**20, disk_bytes=50 * 10**6)

Run = Callable[..., RunOutcome]


@pytest.fixture(scope="session")
def sandbox() -> Iterator[LocalExecutor]:
    with LocalExecutor(workers=1) as executor:
        yield executor


@pytest.fixture
def run_strategy(sandbox: LocalExecutor, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """run_strategy(code, mode="class", rows=ROWS, backtest={...}) -> RunOutcome, in the sandbox, static checks off."""
    cache = tmp_path_factory.getbasetemp() / "integrity-cache"

    def run(code: str, *, mode: str = "class", rows: int | None = ROWS, backtest: dict[str, object] | None = None,
            include_series: bool = False) -> RunOutcome:
        spec = StrategySpec(name="forgery", code=textwrap.dedent(code), mode=mode, source="python", limits=LIMITS,
                            backtest=dict(backtest or {}))
        prepared = prepare(spec, static_checks=False, cache_dir=Path(cache))
        if rows is not None and mode == "class":
            prepared = prepared.on_rows(0, rows, include_series=include_series)
        return sandbox.execute(prepared)

    return run
