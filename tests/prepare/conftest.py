"""Fixtures shared by the prepare tests: the real BTC-USD 15m dataset shipped with the project."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BTC_GZ = REPO / "examples" / "data" / "BTC-USD-15m.csv.gz"


@pytest.fixture(scope="session")
def btc_gz() -> Path:
    return BTC_GZ


@pytest.fixture(scope="session")
def btc_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plain CSV, exactly as users have it (leading spaces, trailing comma)."""
    target = tmp_path_factory.mktemp("data") / "BTC-USD-15m.csv"
    target.write_bytes(gzip.decompress(BTC_GZ.read_bytes()))
    return target


@pytest.fixture(scope="session")
def btc_text(btc_csv: Path) -> str:
    return btc_csv.read_text()
