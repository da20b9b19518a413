"""Shared fixtures: the real bundled dataset and an isolated RBI_HOME per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUNDLED_DATA = REPO / "operator" / "rbi" / "datasets" / "BTC-USD-15m.csv.gz"
SHARED_DATA = REPO.parent / "shared" / "data" / "BTC-USD-15m.csv"
EXAMPLES = REPO / "examples" / "strategies"


@pytest.fixture(scope="session", autouse=True)
def _rbi_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # Tests must never touch the developer's ~/.rbi or a database named in their environment.
    home = tmp_path_factory.mktemp("rbi-home")
    patcher = pytest.MonkeyPatch()
    patcher.setenv("RBI_HOME", str(home))
    patcher.delenv("RBI_DB_URL", raising=False)
    yield home
    patcher.undo()


@pytest.fixture(scope="session")
def bundled_data() -> Path:
    return BUNDLED_DATA
