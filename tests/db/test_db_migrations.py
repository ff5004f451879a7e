"""Migrations: `connect` brings any database to the newest revision, once, keeping data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

import db
from db._database import alembic_config
from db._schema import VERSION_TABLE, Base

TABLES = {
    "sweeper_sweeps",
    "sweeper_trials",
    "sweeper_metric_points",
    "sweeper_transfers",
    "sweeper_runs",
}


def _head() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def test_connect_creates_the_schema_at_the_newest_revision(database: db.Database) -> None:
    assert set(inspect(database.engine).get_table_names()) == TABLES | {"sweeper_alembic_version"}
    assert _revision(database.engine) == _head() == "0004"


def test_optuna_shares_the_database(database: db.Database) -> None:
    """Optuna's RDBStorage (its own `trials` and `alembic_version`) lives beside ours."""
    sweep_id = db.create_sweep(database, name="s", spec={})
    storage = optuna.storages.RDBStorage(database.url)
    study = optuna.create_study(study_name="shared", storage=storage)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    database.migrate()  # our history is untouched by Optuna's: nothing to do
    assert _revision(database.engine) == _head()
    assert db.get_sweep(database, sweep_id=sweep_id).name == "s"
    assert len(optuna.load_study(study_name="shared", storage=storage).trials) == 2
    assert set(inspect(database.engine).get_table_names()) >= TABLES


def test_migrated_schema_matches_the_orm_classes(database: db.Database) -> None:
    # Autogenerate finds nothing to do: the revisions and `db._schema` describe one schema.
    with database.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "version_table": VERSION_TABLE}
        )
        assert compare_metadata(context, Base.metadata) == []


def test_reconnecting_keeps_data_and_migrates_nothing(database_url: str) -> None:
    first = db.connect(database_url)
    sweep_id = db.create_sweep(first, name="kept", spec={"widths": [64, 128]})
    first.dispose()

    second = db.connect(database_url)
    try:
        assert db.get_sweep(second, sweep_id=sweep_id).spec == {"widths": [64, 128]}
        assert _revision(second.engine) == _head()
        second.migrate()  # and again, explicitly
        assert db.list_sweeps(second).total == 1
    finally:
        second.dispose()


def test_downgrade_to_base_and_upgrade_again(database: db.Database) -> None:
    with database.engine.begin() as connection:
        command.downgrade(alembic_config(connection=connection), "base")
    assert set(inspect(database.engine).get_table_names()) <= {"sweeper_alembic_version"}

    database.migrate()
    assert set(inspect(database.engine).get_table_names()) == TABLES | {"sweeper_alembic_version"}
    assert db.create_sweep(database, name="after", spec={}) == 1


def test_startup_time_revision_keeps_the_stored_curves(database: db.Database) -> None:
    """0001 -> 0002 adds `startup_s` to trials and points; what was stored stays, as NULL."""
    with database.engine.begin() as connection:
        command.downgrade(alembic_config(connection=connection), "0001")
    columns = {c["name"] for c in inspect(database.engine).get_columns("sweeper_trials")}
    assert "startup_s" not in columns
    with database.engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO sweeper_sweeps (id, name, status, spec, created_at)"
            " VALUES (1, 'old', 'completed', '{}', CURRENT_TIMESTAMP)"
        )
        connection.exec_driver_sql(
            "INSERT INTO sweeper_trials (id, sweep_id, key, width, params, status, created_at)"
            " VALUES (1, 1, 'w64-a', 64, '{}', 'completed', CURRENT_TIMESTAMP)"
        )
        connection.exec_driver_sql(
            "INSERT INTO sweeper_metric_points (trial_id, step, tokens, train_loss, time_s)"
            " VALUES (1, 10, 640, 2.5, 1.0)"
        )

    database.migrate()
    assert _revision(database.engine) == _head()
    trial = db.get_trial(database, trial_id=1)
    assert trial.key == "w64-a" and trial.startup_s is None
    [point] = db.get_curves(database, sweep_id=1)[1]
    assert (point.step, point.train_loss, point.startup_s) == (10, 2.5, None)


def test_processes_connecting_at_once_to_a_fresh_database_migrate_it_once(
    database_url: str,
) -> None:
    # Real processes, as in production (the API and a sweep driver starting together).
    # Without the migration lock the losers of the race fail with "table already exists".
    script = "import sys, db; db.connect(sys.argv[1]).dispose()"
    env = {**os.environ, "PYTHONPATH": str(Path(db.__file__).resolve().parents[1])}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, database_url],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        outputs = [process.communicate(timeout=60)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
            process.wait()
    assert [process.returncode for process in processes] == [0] * 4, outputs

    database = db.connect(database_url)
    try:
        assert _revision(database.engine) == _head()
    finally:
        database.dispose()


def test_driver_identity_revision_gives_old_jobs_a_heartbeat(database: db.Database) -> None:
    """0002 -> 0003 adds the driver's host and pid and the watchdog's resume count; a job
    stored before has no driver, no resume, and its heartbeat is its creation time."""
    with database.engine.begin() as connection:
        command.downgrade(alembic_config(connection=connection), "0002")
        connection.exec_driver_sql(
            "INSERT INTO sweeper_sweeps (id, name, status, spec, created_at)"
            " VALUES (1, 'old', 'running', '{}', '2026-11-30 12:00:00+00:00')"
        )
    database.migrate()
    sweep = db.get_sweep(database, sweep_id=1)
    assert sweep.driver_heartbeat_at == sweep.created_at
    assert (sweep.driver_host, sweep.driver_pid, sweep.auto_resumes) == (None, None, 0)


def test_data_identity_revision_keeps_old_jobs_without_data(database: db.Database) -> None:
    """0003 -> 0004 adds the data identity to sweeps and runs: jobs stored before have none,
    jobs stored after keep theirs as given."""
    with database.engine.begin() as connection:
        command.downgrade(alembic_config(connection=connection), "0003")
        connection.exec_driver_sql(
            # No explicit id: PostgreSQL's sequence must hand out the next ones below.
            "INSERT INTO sweeper_sweeps (name, status, spec, created_at, auto_resumes)"
            " VALUES ('old', 'completed', '{}', '2026-11-30 12:00:00+00:00', 0)"
        )
    database.migrate()
    [old] = db.list_sweeps(database).items
    assert old.name == "old" and old.data is None
    identity = {"source": "/data/c", "sha256": "ab", "tokenizer": "bpe", "vocab_size": 512}
    sweep_id = db.create_sweep(database, name="new", spec={}, data=identity)
    run_id = db.create_run(database, name="r", config={}, sweep_id=sweep_id, data=identity)
    assert db.get_sweep(database, sweep_id=sweep_id).data == identity
    assert db.get_run(database, run_id=run_id).data == identity
