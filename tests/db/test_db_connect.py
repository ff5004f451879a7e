"""`connect`, SQLite settings and the session's error translation (which URL: the
settings', tests/test_settings.py)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select, text

import db
from db._schema import SweepRow, utcnow


def test_plain_postgresql_url_gets_the_psycopg_driver() -> None:
    database = db.Database("postgresql://user:secret@localhost:5432/sweeper")
    assert database.engine.dialect.driver == "psycopg"
    assert database.url == "postgresql+psycopg://user:secret@localhost:5432/sweeper"
    assert "secret" not in repr(database)


def test_other_backends_are_refused() -> None:
    with pytest.raises(db.StorageError, match="unsupported database 'mysql'"):
        db.Database("mysql://localhost/sweeper")


def test_sqlite_file_uses_wal_foreign_keys_and_a_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "sweeper.db"
    database = db.connect(f"sqlite:///{path}")
    try:
        with database.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    finally:
        database.dispose()
    # WAL is a property of the file: any later reader sees it.
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_session_commits_on_success(database: db.Database) -> None:
    with database.session() as s:
        s.add(SweepRow(name="a", status=db.JobStatus.QUEUED, spec={}, created_at=utcnow()))
    with database.session() as s:
        assert s.scalars(select(SweepRow.name)).all() == ["a"]


def test_session_rolls_back_and_reraises_other_errors(database: db.Database) -> None:
    with pytest.raises(KeyError), database.session() as s:
        s.add(SweepRow(name="a", status=db.JobStatus.QUEUED, spec={}, created_at=utcnow()))
        s.flush()
        raise KeyError("boom")
    assert db.list_sweeps(database).total == 0


def test_session_turns_integrity_errors_into_conflict(database: db.Database) -> None:
    sweep_id = db.create_sweep(database, name="a", spec={})
    update = text("UPDATE sweeper_sweeps SET status = 'bogus' WHERE id = :id")
    conflict = pytest.raises(db.Conflict, match=r"^marking sweep failed: .*status")
    with conflict, database.session("marking sweep") as s:
        s.execute(update, {"id": sweep_id})
    assert db.get_sweep(database, sweep_id=sweep_id).status is db.JobStatus.QUEUED


def test_session_turns_other_sql_errors_into_storage_error(database: db.Database) -> None:
    failure = pytest.raises(db.StorageError, match=r"^peeking failed: .*no_such_table")
    with failure as caught, database.session("peeking") as s:
        s.execute(text("SELECT * FROM no_such_table"))
    assert not isinstance(caught.value, db.Conflict | db.NotFound)


def test_two_processes_writing_at_once_do_not_lock_each_other_out(database_url: str) -> None:
    # A sweep driver writing trials and points while the API writes heartbeats-like
    # updates and reads, through separate engines (as separate processes would).
    driver, api = db.connect(database_url), db.connect(database_url)
    sweep_id = db.create_sweep(api, name="busy", spec={})
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            for i in range(20):
                trial_id = db.upsert_trial(
                    driver, sweep_id=sweep_id, key=f"t{i}", width=64, params={"lr": i}
                )
                points = [
                    {"step": s, "tokens": s, "train_loss": 1.0, "time_s": s} for s in range(5)
                ]
                db.add_metric_points(driver, trial_id=trial_id, points=points)
                db.touch_sweep_heartbeat(driver, sweep_id=sweep_id)
        except BaseException as exc:
            errors.append(exc)

    def serve() -> None:
        try:
            for _ in range(20):
                db.list_trials(api, sweep_id=sweep_id)
                db.get_curves(api, sweep_id=sweep_id)
                db.set_sweep_optuna_study(api, sweep_id=sweep_id, study_name="s")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=drive), threading.Thread(target=serve)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        curves = db.get_curves(api, sweep_id=sweep_id)
        assert len(curves) == 20
        assert all(len(points) == 5 for points in curves.values())
    finally:
        driver.dispose()
        api.dispose()


def test_sqlite_reads_do_not_wait_for_a_writer(tmp_path: Path) -> None:
    """The API's reads run while a driver holds the write lock (WAL, deferred BEGIN)."""
    url = f"sqlite:///{tmp_path / 'sweeper.db'}"
    writer, reader = db.connect(url), db.connect(url)
    sweep_id = db.create_sweep(writer, name="s", spec={})
    with writer.session("holding the write lock") as s:
        s.execute(text("UPDATE sweeper_sweeps SET name = 'renamed'"))
        started = time.monotonic()
        assert db.get_sweep(reader, sweep_id=sweep_id).name == "s"  # the committed state
        assert db.list_sweeps(reader).total == 1
        assert time.monotonic() - started < 1.0
    assert db.get_sweep(reader, sweep_id=sweep_id).name == "renamed"
    writer.dispose()
    reader.dispose()


def test_a_write_lock_held_by_another_process_is_unavailable_not_a_storage_error(tmp_path):
    """SQLite's "database is locked" (another process inside BEGIN IMMEDIATE, as a database
    browser holds it) is `Unavailable`: worth retrying, unlike other storage errors."""
    path = tmp_path / "sweeper.db"
    database = db.connect(f"sqlite:///{path}", busy_timeout_s=0.2)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(db.Unavailable, match="database is locked"):
            db.create_sweep(database, name="blocked", spec={})
        assert db.list_sweeps(database).total == 0  # reads go on (WAL)
        holder.execute("ROLLBACK")
        assert db.create_sweep(database, name="after", spec={}) == 1
    finally:
        holder.close()
        database.dispose()
