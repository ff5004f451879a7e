"""Alembic environment, configured in code by `db._database.alembic_config`.

`db.connect()` hands over its own connection, already inside the transaction that holds the
migration lock, so the upgrade runs there. A developer writing a new revision passes a URL
instead (`alembic_config(url=...)` with `alembic.command.revision(..., autogenerate=True)`).
Batch mode is on because SQLite can alter a table only by copying it.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from db._schema import VERSION_TABLE, Base


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=True,
        compare_type=True,
        # Optuna's RDBStorage shares the database and keeps its own Alembic history in
        # `alembic_version` (and a `trials` table): ours are prefixed to stay apart.
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("alembic_config() needs a connection or a url")
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            _run(connection)
    finally:
        engine.dispose()


_main()
