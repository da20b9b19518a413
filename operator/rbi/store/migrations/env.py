"""Alembic environment for the results store.

`ResultStore.migrate()` hands in an open connection (inside its own transaction, holding the migration
lock); the `alembic` command line, for writing new revisions, gets its URL from `-x url=...`, else from
`RBI_DB_URL` or the default SQLite file:

    alembic -c operator/rbi/store/migrations/alembic.ini -x url=sqlite:////tmp/dev.db \\
        revision --autogenerate -m "add a column"
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from rbi.store.models import Base
from rbi.store.repository import ResultStore

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return context.get_x_argument(as_dictionary=True).get("url") or ResultStore.default_url()


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        # The caller owns the transaction; begin_transaction() below joins it instead of committing.
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    store = ResultStore(_url())
    try:
        with store.engine.connect() as own:
            _configure(own)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        store.close()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
