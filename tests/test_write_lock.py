"""A sweep survives another process holding SQLite's write lock, as a database browser or a
user's `sqlite3` shell after BEGIN IMMEDIATE does: the driver retries its writes while Tune
holds the results, so nothing is lost or stored twice; only a lock held past the retry
budget fails the sweep, with a one-line reason and no trial left running.

Real driver processes, a real Ray local cluster (in a temp dir of its own), and another
process holding the lock on the sweep's database file as the `sqlite3` shell does (through
SQLite's own library, Python's sqlite3 module: no shell to install).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import db
from sweeper import service
from tests.conftest import driver_log
from tests.test_sweep_engine import make_spec, run_to_end, wait_for

# Takes the write lock, says so, and holds it until its stdin closes.
_HOLD_LOCK = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()
connection.execute("ROLLBACK")
"""


@contextmanager
def write_lock(database_file: Path) -> Iterator[None]:
    """Another process holding the database's write lock (BEGIN IMMEDIATE) until exit."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(database_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "locked"
    try:
        yield
    finally:
        holder.communicate("", timeout=30)
        assert holder.returncode == 0


def database_file(database: db.Database) -> Path:
    return Path(database.engine.url.database or "")


def test_a_lock_held_for_45_s_mid_sweep_delays_it_and_loses_no_point(
    database,
    shakespeare,
    tmp_path,
):
    spec = make_spec(
        shakespeare, train=make_spec(shakespeare).train.model_copy(update={"steps": 60})
    )
    sweep = service.start_sweep(database, spec)
    wait_for(lambda: any(db.get_curves(database, sweep_id=sweep.id).values()), "a first point")
    with write_lock(database_file(database)):
        time.sleep(45)
    released_at = time.monotonic()
    progress = run_to_end(database, sweep.id)
    assert progress.sweep.status is db.JobStatus.COMPLETED, progress.sweep.error
    assert "database is locked" in driver_log(tmp_path)  # it did wait the lock out
    assert len(progress.trials) == 4
    assert all(t.status is db.TrialStatus.COMPLETED for t in progress.trials)
    curves = db.get_curves(database, sweep_id=sweep.id)
    for trial in progress.trials:  # every point once
        assert [p.step for p in curves[trial.id]] == list(range(10, 61, 10)), trial.key
    print(f"lock held 45 s: the sweep completed {time.monotonic() - released_at:.0f} s later")


def test_a_lock_held_past_the_retry_budget_fails_the_sweep_in_one_line(
    database,
    shakespeare,
    tmp_path,
    monkeypatch,
):
    monkeypatch.setenv("SWEEPER_WRITE_RETRY_S", "3")
    spec = make_spec(
        shakespeare,
        train=make_spec(shakespeare).train.model_copy(update={"steps": 5000, "eval_interval": 5}),
    )
    sweep = service.start_sweep(database, spec)
    wait_for(lambda: any(db.get_curves(database, sweep_id=sweep.id).values()), "a first point")
    with write_lock(database_file(database)):
        # Released once the driver gave a write up, so that it can record why.
        wait_for(lambda: "(retried for 3 s)" in driver_log(tmp_path), "the driver to give up")
    progress = run_to_end(database, sweep.id)
    assert progress.sweep.status is db.JobStatus.FAILED
    error = progress.sweep.error or ""
    assert error.startswith("Unavailable: ") and "\n" not in error, error
    assert error.endswith("database is locked (retried for 3 s)"), error
    assert progress.trials and not [
        t for t in progress.trials if t.status is db.TrialStatus.RUNNING
    ]
