"""Fixtures that run every storage test on a real SQLite file and a real PostgreSQL server
(the `postgres_server` fixture of tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from db import Database, connect
from tests.conftest import PostgresServer


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh, empty database on each backend (nothing migrated yet)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sweeper.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    with server.fresh_database() as url:
        yield url


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """A connected, migrated, empty database on each backend."""
    database = connect(database_url)
    yield database
    database.dispose()
