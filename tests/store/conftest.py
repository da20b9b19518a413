"""Fixtures for the results-store tests: every behaviour runs on a real SQLite file and, when
RBI_TEST_POSTGRES_URL is set (scripts/ci-postgres.sh prints one), on a real PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import MetaData, create_engine

from rbi.store import ResultStore

POSTGRES_ENV = "RBI_TEST_POSTGRES_URL"


def drop_everything(url: str) -> None:
    """Leave the PostgreSQL database empty, alembic_version included, whatever a previous run left."""
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            existing = MetaData()
            existing.reflect(connection)
            existing.drop_all(connection)
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} is not set; `scripts/ci-postgres.sh` starts a server and prints one")
    drop_everything(url)
    return url


@pytest.fixture
def empty_postgres_url(postgres_url: str) -> str:
    # Tests count rows, so each starts from an empty database.
    drop_everything(postgres_url)
    return postgres_url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a fresh SQLite file (its directory not yet created), or a wiped PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'home' / 'rbi.db'}"
    url: str = request.getfixturevalue("empty_postgres_url")
    return url


@pytest.fixture
def store(db_url: str) -> Iterator[ResultStore]:
    with ResultStore(db_url) as opened:
        opened.migrate()
        yield opened
