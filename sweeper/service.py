"""The service layer: what the CLI and the REST API both call. They stay thin shells.

Sweeps run in a driver process of their own (`python -m sweeper.driver ID`), never in the
caller: starting returns at once with the id. The driver's heartbeat in the database tells
a live driver from a dead one, so `resume_sweep` (and `resume_orphaned_sweeps`, which the
service runs at start) can continue exactly the sweeps whose driver died.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import platformdirs

import db
from sweeper.spec import SweepSpec

# A driver beats every 2 s; this much silence means it is gone.
DRIVER_STALE_S = 30.0
CANCELLABLE = frozenset({db.SweepStatus.QUEUED, db.SweepStatus.RUNNING})


@dataclass(frozen=True)
class SweepProgress:
    sweep: db.Sweep
    spec: SweepSpec
    trials: list[db.Trial]
    planned: int

    @property
    def finished(self) -> int:
        return sum(t.status.finished for t in self.trials)

    def best_per_width(self) -> dict[int, db.Trial]:
        """The trial with the lowest final eval loss at each width (finite losses only)."""
        best: dict[int, db.Trial] = {}
        for t in self.trials:
            if t.final_eval_loss is None or t.status is not db.TrialStatus.COMPLETED:
                continue
            if t.width not in best or t.final_eval_loss < (best[t.width].final_eval_loss or 0):
                best[t.width] = t
        return dict(sorted(best.items()))


def log_dir() -> Path:
    path = Path(platformdirs.user_log_dir("sweeper"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def launch_driver(database: db.Database, sweep_id: int) -> Path:
    """Start the detached process that drives the sweep; returns its log file."""
    log_path = log_dir() / f"sweep-{sweep_id}.log"
    with log_path.open("ab") as log_file:
        subprocess.Popen(
            [sys.executable, "-m", "sweeper.driver", str(sweep_id)],
            env=os.environ | {db.ENV_VAR: database.url},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the CLI call or the API request that started it
        )
    return log_path


def start_sweep(database: db.Database, spec: SweepSpec) -> db.Sweep:
    """Store the sweep as queued and start its driver."""
    sweep_id = db.create_sweep(database, name=spec.name, spec=spec.model_dump(mode="json"))
    launch_driver(database, sweep_id)
    return db.get_sweep(database, sweep_id=sweep_id)


def sweep_progress(database: db.Database, sweep_id: int) -> SweepProgress:
    sweep = db.get_sweep(database, sweep_id=sweep_id)
    spec = SweepSpec.model_validate(sweep.spec)
    trials = db.list_trials(database, sweep_id=sweep_id)
    return SweepProgress(sweep=sweep, spec=spec, trials=trials, planned=len(spec.plan()))


def list_sweeps(database: db.Database, *, offset: int = 0, limit: int = 50) -> db.Page[db.Sweep]:
    return db.list_sweeps(database, offset=offset, limit=limit)


def cancel_sweep(database: db.Database, sweep_id: int) -> db.Sweep:
    """Mark the sweep cancelled; its driver sees that within a second and stops its trials.
    What was recorded stays."""
    sweep = db.get_sweep(database, sweep_id=sweep_id)
    if sweep.status not in CANCELLABLE:
        raise db.Conflict(f"sweep {sweep_id} is {sweep.status}: nothing to cancel")
    return db.set_sweep_status(
        database, sweep_id=sweep_id, status=db.SweepStatus.CANCELLED, expected=CANCELLABLE
    )


def driver_alive(sweep: db.Sweep, *, now: datetime | None = None) -> bool:
    """Whether a driver has beaten recently (a just-created sweep counts as alive)."""
    last = sweep.driver_heartbeat_at or sweep.created_at
    if last.tzinfo is None:
        last = last.replace(tzinfo=UTC)
    return ((now or datetime.now(UTC)) - last).total_seconds() < DRIVER_STALE_S


def resume_sweep(database: db.Database, sweep_id: int) -> db.Sweep:
    """Continue a sweep whose driver died, or that failed or was cancelled: finished trials
    are kept, the rest run (again)."""
    sweep = db.get_sweep(database, sweep_id=sweep_id)
    if sweep.status is db.SweepStatus.COMPLETED:
        raise db.Conflict(f"sweep {sweep_id} is completed: nothing to resume")
    if sweep.status in CANCELLABLE and driver_alive(sweep):
        raise db.Conflict(f"sweep {sweep_id} is {sweep.status} and its driver is alive")
    launch_driver(database, sweep_id)
    return sweep


def resume_orphaned_sweeps(database: db.Database) -> list[int]:
    """Resume every queued or running sweep whose driver is dead (run at service start)."""
    resumed = []
    for status in CANCELLABLE:
        for sweep in db.list_sweeps(database, status=status, limit=10_000).items:
            if not driver_alive(sweep):
                launch_driver(database, sweep.id)
                resumed.append(sweep.id)
    return resumed
