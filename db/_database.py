"""Engine, session and migrations: how a process gets a ready database.

`connect(url)` is the only way in. It creates the engine with the settings
each backend needs for several processes (the sweep driver and the API) sharing one
database, and brings the schema to the newest Alembic revision before returning, so no
caller ever sees an old schema.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    NoResultFound,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.orm import Session, sessionmaker

from db.errors import Conflict, NotFound, StorageError, Unavailable

if TYPE_CHECKING:  # Alembic is imported where it migrates: a trial imports db, never migrates
    from alembic.config import Config

SUPPORTED_BACKENDS = ("sqlite", "postgresql")

# How long a SQLite writer waits for another process's write lock before giving up.
SQLITE_BUSY_TIMEOUT_S = 30.0
# Any constant shared by every process migrating a PostgreSQL database.
_PG_MIGRATION_LOCK = 0x5EE9E6_0001

_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Alembic's `context` and `op` are module-level proxies: one migration at a time per process.
_ALEMBIC_LOCK = threading.Lock()


# Whether the transaction being opened in this context only reads (see `Database.session`).
_READ_ONLY: ContextVar[bool] = ContextVar("sweeper_db_read_only", default=False)


def connect(url: str, *, busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_S) -> Database:
    """Open the database at `url` and migrate it to the newest schema (which URL is the
    caller's to know: `sweeper.settings.Settings.database_url`).

    ``busy_timeout_s``: how long one SQLite transaction waits for another process's write
    lock before it fails with `Unavailable` (PostgreSQL waits on row locks as it does).
    """
    database = Database(url, busy_timeout_s=busy_timeout_s)
    try:
        database.migrate()
    except BaseException:
        database.dispose()
        raise
    return database


class Database:
    """One engine and its sessions. Create it with `connect()`; share it within a process."""

    def __init__(self, url: str, *, busy_timeout_s: float = SQLITE_BUSY_TIMEOUT_S) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError as exc:  # the message leaves the URL (and any password) out
            raise StorageError(f"invalid database URL: {exc}") from exc
        if parsed.get_backend_name() not in SUPPORTED_BACKENDS:
            raise StorageError(
                f"unsupported database {parsed.get_backend_name()!r} in {parsed!r}: "
                f"use one of {', '.join(SUPPORTED_BACKENDS)}"
            )
        if parsed.drivername == "postgresql":
            # psycopg 3 is the driver this project installs; SQLAlchemy's default is psycopg2.
            parsed = parsed.set(drivername="postgresql+psycopg")
        self.busy_timeout_s = busy_timeout_s
        self._engine = _create_engine(parsed, busy_timeout_s)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def url(self) -> str:
        """The full URL (password included), e.g. to give Optuna's RDBStorage the same DB."""
        return self._engine.url.render_as_string(hide_password=False)

    @property
    def backend(self) -> str:
        """`sqlite` or `postgresql`."""
        return self._engine.dialect.name

    def __repr__(self) -> str:
        return f"Database({self._engine.url!r})"

    @contextmanager
    def session(
        self, what: str = "database operation", *, read_only: bool = False
    ) -> Iterator[Session]:
        """One transaction: commits on success, rolls back on any error.

        A ``read_only`` transaction on SQLite starts deferred, so that readers (the API,
        polled every few seconds) never queue behind a writer's lock; in WAL mode they see
        the last committed state.

        SQLAlchemy errors leave as domain errors whose message starts with `what`:
        integrity violations as `Conflict`, a missing row as `NotFound`, a database that
        does not answer now (locked, restarting, unreachable) as `Unavailable`, the rest as
        `StorageError`.
        """
        session = self._sessions()
        read_only_token = _READ_ONLY.set(read_only)
        try:
            yield session
            session.commit()
        except BaseException as exc:
            session.rollback()
            if isinstance(exc, IntegrityError):
                raise Conflict(f"{what} failed: {_reason(exc)}") from exc
            if isinstance(exc, NoResultFound):
                raise NotFound(f"{what} failed: no such row") from exc
            if isinstance(exc, OperationalError) or (
                isinstance(exc, DBAPIError) and exc.connection_invalidated
            ):
                raise Unavailable(f"{what} failed: {_reason(exc)}") from exc
            if isinstance(exc, SQLAlchemyError):
                raise StorageError(f"{what} failed: {_reason(exc)}") from exc
            raise
        finally:
            session.close()
            _READ_ONLY.reset(read_only_token)

    def migrate(self) -> None:
        """Upgrade the schema to the newest revision (a no-op when it is already there).

        Several processes may start at once on a fresh database, so the whole upgrade runs
        in one transaction that first takes a lock (SQLite: BEGIN IMMEDIATE, see
        `_create_engine`; PostgreSQL: an advisory lock). The second process waits, then finds
        the schema at head and does nothing. Both backends have transactional DDL, so a
        failed upgrade leaves the previous schema intact.
        """
        from alembic import command

        try:
            with _ALEMBIC_LOCK, self._engine.begin() as connection:
                if self.backend == "postgresql":
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
                    )
                command.upgrade(alembic_config(connection=connection), "head")
        except SQLAlchemyError as exc:
            error = Unavailable if isinstance(exc, OperationalError) else StorageError
            raise error(f"migrating {self!r} failed: {_reason(exc)}") from exc

    def dispose(self) -> None:
        """Close every pooled connection (the Database is unusable afterwards)."""
        self._engine.dispose()


def alembic_config(*, connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic config for the package's own migrations; no alembic.ini needed.

    `connection` is used by `migrate()`; `url` lets a developer write a new revision:
    `command.revision(alembic_config(url="sqlite:///dev.db"), "message", autogenerate=True)`.
    """
    from alembic.config import Config

    config = Config()
    # The config file format interpolates "%", which may appear in an install path.
    config.set_main_option("script_location", str(_MIGRATIONS).replace("%", "%%"))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def _create_engine(url: URL, busy_timeout_s: float) -> Engine:
    if url.get_backend_name() != "sqlite":
        # pre-ping: a server restart must not break the first query of a long-lived process.
        return create_engine(url, json_serializer=_dumps_json, pool_pre_ping=True)

    engine = create_engine(url, json_serializer=_dumps_json)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when a transaction begins (see `_on_begin`).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # First, so that the next pragma too waits for a lock held by another process.
        cursor.execute(f"PRAGMA busy_timeout={round(busy_timeout_s * 1000)}")
        # WAL: readers (the API) never block the writer (the sweep driver) and the reverse.
        # It is a property of the file, set by whichever process opens it first.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")  # off by default in SQLite, per connection
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # IMMEDIATE takes the write lock at BEGIN, waiting up to the busy timeout for it.
        # A deferred transaction that reads and then writes fails at once with "database is
        # locked" when another process wrote in between, and no timeout helps it. A read-only
        # transaction never writes, so it begins deferred and takes no lock.
        connection.exec_driver_sql("BEGIN" if _READ_ONLY.get() else "BEGIN IMMEDIATE")

    return engine


def _dumps_json(document: Any) -> str:
    """JSON for every JSON column, with NaN and ±inf written as null.

    Standard JSON has no NaN, and PostgreSQL refuses Python's `NaN` token; null is what the
    float columns store for a non-finite value too (see `FiniteFloat`).
    """
    return json.dumps(_finite(document), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _reason(exc: SQLAlchemyError) -> str:
    # The driver's own message ("UNIQUE constraint failed: ...", PostgreSQL's DETAIL line
    # included) without SQLAlchemy's statement dump and parameters, which can be long.
    orig = getattr(exc, "orig", None)
    lines = str(orig if orig is not None else exc).strip().splitlines()
    return "; ".join(line.strip() for line in lines if line.strip())
