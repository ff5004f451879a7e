"""Shared fixtures: seeding, the shakespeare corpus, small configs, a PostgreSQL server.

The corpus ships with the tests (`tests/data/shakespeare.txt`: The Tempest and Titus
Andronicus, public domain, 330 KB), so the whole suite runs on a fresh clone.

The PostgreSQL server is a throwaway one started here: `initdb` into a temporary
directory, `pg_ctl start` listening on a Unix socket in that directory only (no TCP port,
so nothing can collide with or reach it), fsync off for speed. Each test gets a fresh
database on it. Only the server binaries are needed (Debian: `apt-get install postgresql`);
when they are missing the PostgreSQL cases skip. PostgreSQL refuses to run as root, so
under root the server runs as the `postgres` user (created by that package) or `nobody`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil
import pytest
import torch
from sqlalchemy import make_url

import db
from models import ModelConfig, TrainConfig, preset
from sweeper.settings import DB_URL_VAR as ENV_VAR

if TYPE_CHECKING:  # the driver is imported where a test uses PostgreSQL: GPU machines lack it
    import psycopg

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO / "tests" / "data" / "shakespeare.txt"


# The file that runs longest (one experiment of four sweeps and their launches, ~8 min on
# CI's two cores), collected first: under `pytest -n 2 --dist loadfile` workers take files
# in collection order, and in its alphabetical place it started late and ran alone at the
# end while the other worker idled.
FIRST = "test_transfer_proof.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name != FIRST)  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def _torch_threads() -> None:
    """Under pytest-xdist, torch in each worker trains on that worker's share of the cores:
    at full width, two workers' OpenMP threads outnumber the cores and spin-wait for each
    other (100 training steps took 61 s instead of 20 s beside two busy processes)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, torch.get_num_threads() // workers))


@pytest.fixture(scope="session", autouse=True)
def _ray_train_polls_often() -> Iterator[None]:
    """Ray Train's controller takes a worker's report when it polls the workers, every 2 s by
    default, and the worker waits for that (its queue holds one report): the tiny runs here,
    which report every fraction of a second, would train at one report per 2 s. The drivers
    that tests start inherit this environment."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
        yield


@pytest.fixture(scope="session")
def shakespeare() -> str:
    return str(SHAKESPEARE)


def tiny_sweep(data: str, **overrides: Any) -> dict[str, Any]:
    """The sweep that engine, API and deployment tests run: 2 widths x 2 LRs, 20 steps,
    fp32 on CPU, one CPU per trial (as a spec dict: tests post it or validate it)."""
    spec: dict[str, Any] = {
        "name": "tiny",
        "train": {
            "model": {"depth": 2, "head_dim": 16, "seq_len": 32},
            "data": data,
            "steps": 20,
            "batch_size": 4,
            "eval_interval": 10,
            "eval_batches": 2,
            "device": "cpu",
            "precision": "fp32",
        },
        "widths": [16, 32],
        "search": {"lr": {"min": 2**-6, "max": 2**-2, "points": 2}, "wd": [0.0]},
        "resources": {"cpu": 1},
    }
    return spec | overrides


def drivers_of(database_url: str) -> list[psutil.Process]:
    """The sweep/run driver processes of one test's database (other runs' are left alone)."""
    ours = _same_url(database_url)
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if "sweeper.driver" not in (proc.info["cmdline"] or []):
            continue
        with contextlib.suppress(psutil.Error):
            if _same_url(proc.environ().get(ENV_VAR, "")) == ours:
                found.append(proc)
    return found


def _same_url(url: str) -> str:
    """One spelling of a database URL (the service hands drivers its own rendering)."""
    return make_url(url).render_as_string(hide_password=False) if url else ""


def ray_processes(root: Path) -> list[psutil.Process]:
    """The processes of the Ray clusters started under temp dir ``root`` (GCS, raylet,
    workers: each names its session directory on its command line)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(root) in part for part in proc.info["cmdline"] or []):
            found.append(proc)
    return found


@pytest.fixture
def ray_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """RAY_TMPDIR of one test's drivers: their Ray clusters and Ray's `ray_current_cluster`
    file live here, never in the machine's /tmp/ray (a short path: Ray's socket paths must
    stay under ~100 bytes). Whatever cluster is left under it is killed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="r-"))
    monkeypatch.setenv("RAY_TMPDIR", str(root))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield root
    for proc in ray_processes(root):
        with contextlib.suppress(psutil.Error):
            proc.kill()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ray_tmp: Path
) -> Iterator[db.Database]:
    """A fresh SQLite file that driver processes find through the environment, with their
    logs (`driver_log`) and Ray's results beside it and their Ray clusters under `ray_tmp`."""
    url = f"sqlite:///{tmp_path / 'sweeper.db'}"
    monkeypatch.setenv(ENV_VAR, url)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("SWEEPER_RAY_STORAGE", str(tmp_path / "ray_results"))
    database = db.connect(url)
    yield database
    for proc in drivers_of(url):  # never leave a driver behind a failed test
        proc.kill()
    database.dispose()


def exited_pid() -> int:
    """The pid of a process that has exited (and been reaped): a driver that is gone."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def sweeper_serve(log_path: Path, token: str) -> Iterator[httpx.Client]:
    """`sweeper serve` as a process of its own on a free loopback port, configured by the
    environment as a user's is; yields a client that sends the token. Stopped with SIGINT
    (Ctrl+C) afterwards."""
    port = free_port()
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "sweeper", "serve", "--port", str(port)],
            env=os.environ | {"SWEEPER_API_TOKEN": token},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}
    )

    def up() -> bool:
        assert server.poll() is None, log_path.read_text()
        try:
            return client.get("/health").status_code == 200
        except httpx.TransportError:
            return False

    try:
        deadline = time.monotonic() + 60
        while not up():
            assert time.monotonic() < deadline, (
                f"no answer from the service\n{log_path.read_text()}"
            )
            time.sleep(0.2)
        yield client
    finally:
        client.close()
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


def driver_log(tmp_path: Path) -> str:
    """What the drivers of the test's `database` logged."""
    return "\n".join(p.read_text(errors="replace") for p in (tmp_path / "state").rglob("*.log"))


def debug_config(data: str, **overrides: object) -> TrainConfig:
    """A TrainConfig on the debug preset; model fields and train fields may be overridden."""
    model_fields = {k: v for k, v in overrides.items() if k in ModelConfig.model_fields}
    train_fields = {k: v for k, v in overrides.items() if k not in model_fields}
    model = ModelConfig.model_validate(
        preset("debug").model_dump(exclude_unset=True) | model_fields
    )
    return TrainConfig.model_validate({"data": data, "model": model} | train_fields)


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
        import psycopg

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
