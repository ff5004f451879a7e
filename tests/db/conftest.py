"""Fixtures that run every storage test on a real SQLite file and a real PostgreSQL server.

The PostgreSQL server is a throwaway one started here: `initdb` into a temporary
directory, `pg_ctl start` listening on a Unix socket in that directory only (no TCP port,
so nothing can collide with or reach it), fsync off for speed. Each test gets a fresh
database on it. Only the server binaries are needed (Debian: `apt-get install postgresql`);
when they are missing the PostgreSQL cases skip. PostgreSQL refuses to run as root, so
under root the server runs as the `postgres` user (created by that package) or `nobody`.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from db import Database, connect


def _find_bindir() -> Path | None:
    """Where `initdb` and `pg_ctl` are: `pg_config --bindir`, else Debian's versioned dirs."""
    candidates: list[Path] = []
    if pg_config := shutil.which("pg_config"):
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if result.returncode == 0:
            candidates.append(Path(result.stdout.strip()))
    debian = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    candidates += sorted(debian, key=lambda p: int(p.parent.name), reverse=True)  # newest
    if pg_ctl := shutil.which("pg_ctl"):
        candidates.append(Path(pg_ctl).parent)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    return None


_database_names = itertools.count()


@dataclass(frozen=True)
class PostgresServer:
    socket_dir: Path

    def _admin(self) -> psycopg.Connection:
        return psycopg.connect(
            host=str(self.socket_dir), user="postgres", dbname="postgres", autocommit=True
        )

    @contextmanager
    def fresh_database(self) -> Iterator[str]:
        """A new empty database for one test; its URL, for `db.connect`."""
        name = f"test_{next(_database_names)}"
        with self._admin() as admin:
            admin.execute(f"CREATE DATABASE {name}")
        try:
            yield f"postgresql+psycopg://postgres@/{name}?host={self.socket_dir}"
        finally:
            with self._admin() as admin:
                admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = _find_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql"
        )

    user = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        user = "postgres" if "postgres" in {u.pw_name for u in pwd.getpwall()} else "nobody"
    # Short path: a Unix socket path may not exceed ~100 bytes.
    root = Path(tempfile.mkdtemp(prefix="sweeper-pg-"))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)

    def pg(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(bindir / args[0]), *args[1:]], user=user, cwd=root, capture_output=True, text=True
        )

    data, log = root / "data", root / "server.log"
    steps = [
        ("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync",
         "--no-locale", "-E", "UTF8"),
        ("pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", "30", "-o",
         f"-c listen_addresses='' -k {root} -c fsync=off -c synchronous_commit=off "
         "-c full_page_writes=off", "start"),
    ]  # fmt: skip
    try:
        for step in steps:
            result = pg(*step)
            if result.returncode != 0:
                server_log = log.read_text() if log.exists() else ""
                raise RuntimeError(
                    f"{step[0]} failed ({result.returncode}):\n"
                    f"{result.stdout}{result.stderr}{server_log}"
                )
        yield PostgresServer(root)
    finally:
        if (data / "postmaster.pid").exists():
            pg("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


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
