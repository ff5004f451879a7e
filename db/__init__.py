"""Storage of sweeps, trials, loss curves, transfers and runs (SQLite or PostgreSQL).

    database = db.connect(url)         # sqlite:///path or postgresql+psycopg://...
    sweep_id = db.create_sweep(database, name="lr-wd", spec=spec)
    trial_id = db.upsert_trial(database, sweep_id=sweep_id, key="w128-lr0.0039-wd0.1",
                               width=128, params={"lr": 0.0039, "wd": 0.1})
    db.add_metric_points(database, trial_id=trial_id, points=[...])

`connect()` migrates the schema before returning. Every function takes the `Database`
first and keyword-only arguments after it, runs one transaction, returns frozen
dataclasses, and raises the errors of `db.errors`. Optuna's RDBStorage can share the
database: give it `database.url`.
"""

from db._database import Database, connect
from db._schema import MAX_ID, MAX_INT, JobStatus, TrialStatus
from db.errors import Conflict, NotFound, StorageError, Unavailable
from db.repository import (
    MetricPoint,
    Page,
    Run,
    Sweep,
    SweepCount,
    Transfer,
    Trial,
    add_metric_points,
    close_running_trials,
    create_run,
    create_sweep,
    create_transfer,
    delete_sweep,
    finish_trial,
    get_curves,
    get_run,
    get_run_curve,
    get_sweep,
    get_transfer,
    get_trial,
    latest_completed_sweep,
    list_runs,
    list_sweep_counts,
    list_sweeps,
    list_transfers,
    list_trials,
    note_run_resumed,
    set_run_checkpoint,
    set_run_driver,
    set_run_status,
    set_sweep_driver,
    set_sweep_optuna_study,
    set_sweep_status,
    touch_run_heartbeat,
    touch_sweep_heartbeat,
    upsert_trial,
)

__all__ = [
    "MAX_ID",
    "MAX_INT",
    "Conflict",
    "Database",
    "JobStatus",
    "MetricPoint",
    "NotFound",
    "Page",
    "Run",
    "StorageError",
    "Sweep",
    "SweepCount",
    "Transfer",
    "Trial",
    "TrialStatus",
    "Unavailable",
    "add_metric_points",
    "close_running_trials",
    "connect",
    "create_run",
    "create_sweep",
    "create_transfer",
    "delete_sweep",
    "finish_trial",
    "get_curves",
    "get_run",
    "get_run_curve",
    "get_sweep",
    "get_transfer",
    "get_trial",
    "latest_completed_sweep",
    "list_runs",
    "list_sweep_counts",
    "list_sweeps",
    "list_transfers",
    "list_trials",
    "note_run_resumed",
    "set_run_checkpoint",
    "set_run_driver",
    "set_run_status",
    "set_sweep_driver",
    "set_sweep_optuna_study",
    "set_sweep_status",
    "touch_run_heartbeat",
    "touch_sweep_heartbeat",
    "upsert_trial",
]
