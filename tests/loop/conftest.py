"""Fixtures for the agent and loop tests: a clean LLM environment, a small dataset, a warm sandbox pool."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rbi.engine import LocalExecutor
from rbi.prepare.data import load_ohlcv
from rbi.store import ResultStore


@pytest.fixture(autouse=True)
def _no_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's real key or endpoint must never be used by these tests.
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "RBI_MODEL", "RBI_LLM_CONFIG", "OPENAI_ORG_ID",
                 "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory, bundled_data: Path) -> Path:
    """The first 3,000 bars of the bundled data: enough for an SMA crossover to trade, quick to run."""
    path = tmp_path_factory.mktemp("data") / "BTC-USD-15m-small.csv"
    load_ohlcv(bundled_data).iloc[:3000].to_csv(path)
    return path


@pytest.fixture(scope="module")
def executor() -> Iterator[LocalExecutor]:
    with LocalExecutor(workers=2) as running:
        yield running


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ResultStore]:
    with ResultStore(f"sqlite:///{tmp_path / 'rbi.db'}") as opened:
        opened.migrate()
        yield opened
