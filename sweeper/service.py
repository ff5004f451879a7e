"""The service layer: what the CLI and the REST API both call. They stay thin shells.

Sweeps and runs run in a driver process of their own (`python -m sweeper.driver KIND ID`),
never in the caller: starting returns at once with the id. The driver's heartbeat in the
database tells a live driver from a dead one, so `resume_sweep`/`resume_run` (and
`resume_orphaned_jobs`, which the service runs at start) can continue exactly the jobs whose
driver died.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import platformdirs

import db
from sweeper.compare import SweepComparison, compare_sweep
from sweeper.jobs import Job, JobKind
from sweeper.launch import LaunchRequest, launch_config
from sweeper.spec import SweepSpec
from sweeper.transfer import TransferResult, TrialOutcome, compute_transfer

# A driver beats every 2 s; this much silence means it is gone.
DRIVER_STALE_S = 30.0
CANCELLABLE = frozenset({db.JobStatus.QUEUED, db.JobStatus.RUNNING})


class InvalidInput(ValueError):
    """A request the service refuses, naming the field at fault (HTTP 422, CLI exit 2)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


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


def launch_driver(database: db.Database, kind: JobKind, job_id: int) -> Path:
    """Start the detached process that drives a sweep or a run; returns its log file."""
    log_path = log_dir() / f"{kind}-{job_id}.log"
    with log_path.open("ab") as log_file:
        subprocess.Popen(
            [sys.executable, "-m", "sweeper.driver", kind, str(job_id)],
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
    launch_driver(database, "sweep", sweep_id)
    return db.get_sweep(database, sweep_id=sweep_id)


def sweep_progress(database: db.Database, sweep_id: int) -> SweepProgress:
    sweep = db.get_sweep(database, sweep_id=sweep_id)
    spec = SweepSpec.stored(sweep.spec)
    trials = db.list_trials(database, sweep_id=sweep_id)
    return SweepProgress(sweep=sweep, spec=spec, trials=trials, planned=len(spec.plan()))


def list_sweeps(database: db.Database, *, offset: int = 0, limit: int = 50) -> db.Page[db.Sweep]:
    return db.list_sweeps(database, offset=offset, limit=limit)


def cancel_sweep(database: db.Database, sweep_id: int) -> db.Sweep:
    """Mark the sweep cancelled; its driver sees that within a second and stops its trials.
    What was recorded stays."""
    _check_cancellable("sweep", db.get_sweep(database, sweep_id=sweep_id))
    return db.set_sweep_status(
        database, sweep_id=sweep_id, status=db.JobStatus.CANCELLED, expected=CANCELLABLE
    )


def _check_cancellable(kind: JobKind, job: db.Sweep | db.Run) -> None:
    if job.status not in CANCELLABLE:
        raise db.Conflict(f"{kind} {job.id} is {job.status}: nothing to cancel")


def driver_alive(job: db.Sweep | db.Run, *, now: datetime | None = None) -> bool:
    """Whether a job's driver has beaten recently (a just-created job counts as alive)."""
    last = job.driver_heartbeat_at or job.created_at
    if last.tzinfo is None:
        last = last.replace(tzinfo=UTC)
    return ((now or datetime.now(UTC)) - last).total_seconds() < DRIVER_STALE_S


def resume_sweep(database: db.Database, sweep_id: int) -> db.Sweep:
    """Continue a sweep whose driver died, or that failed or was cancelled: finished trials
    are kept, the rest run (again)."""
    _resume(database, "sweep", db.get_sweep(database, sweep_id=sweep_id))
    return db.get_sweep(database, sweep_id=sweep_id)


def resume_run(database: db.Database, run_id: int) -> db.Run:
    """Continue a run whose driver died, or that failed or was cancelled, from its latest
    checkpoint (Ray Train finds it under the run's name in its storage path)."""
    _resume(database, "run", db.get_run(database, run_id=run_id))
    return db.get_run(database, run_id=run_id)


def _resume(database: db.Database, kind: JobKind, job: db.Sweep | db.Run) -> None:
    _check_resumable(kind, job)
    # Queued at once (not when the driver starts), so a watcher does not read the old final
    # status as the end; queuing also restarts the heartbeat's grace period.
    Job(database, kind, job.id).set_status(db.JobStatus.QUEUED, expected=frozenset({job.status}))
    launch_driver(database, kind, job.id)


def _check_resumable(kind: JobKind, job: db.Sweep | db.Run) -> None:
    if job.status is db.JobStatus.COMPLETED:
        raise db.Conflict(f"{kind} {job.id} is completed: nothing to resume")
    if job.status in CANCELLABLE and driver_alive(job):
        raise db.Conflict(f"{kind} {job.id} is {job.status} and its driver is alive")


def resume_orphaned_jobs(database: db.Database) -> list[str]:
    """Resume every queued or running sweep and run whose driver is dead (run at service
    start); returns them as "sweep 3", "run 1"."""
    # All listed before any is resumed: a resume moves a job to `queued`, a listed state.
    sweeps: list[db.Sweep] = []
    runs: list[db.Run] = []
    for status in CANCELLABLE:
        sweeps += db.list_sweeps(database, status=status, limit=10_000).items
        runs += db.list_runs(database, status=status, limit=10_000).items
    orphans: list[tuple[JobKind, db.Sweep | db.Run]] = [("sweep", s) for s in sweeps]
    orphans += [("run", r) for r in runs]
    resumed = []
    for kind, job in orphans:
        if driver_alive(job):
            continue
        try:
            _resume(database, kind, job)
        except db.Conflict:  # another service process (a second API worker) was first
            continue
        resumed.append(f"{kind} {job.id}")
    return resumed


def transfer(
    database: db.Database, *, sweep_id: int | None, to_width: int
) -> tuple[int, TransferResult]:
    """Fit the sweep's proxies (the latest completed sweep when ``sweep_id`` is None),
    compute the target width's values and store the result as a transfer record."""
    sweep_id = _sweep_or_latest(database, sweep_id)
    progress = sweep_progress(database, sweep_id)
    model = progress.spec.train.model
    if to_width < 1 or to_width % model.head_dim:
        raise InvalidInput(
            "to_width", f"{to_width} is not a positive multiple of head_dim ({model.head_dim})"
        )
    outcomes = [
        TrialOutcome(
            width=t.width,
            lr=t.params["lr"],
            wd=t.params["wd"],
            tau=t.params.get("tau"),
            # A diverged trial is a point without a loss; pruned ones stopped early and
            # would bias the curve, so they are left out like unfinished ones.
            loss=t.final_eval_loss if t.status is db.TrialStatus.COMPLETED else None,
        )
        for t in progress.trials
        if t.status in (db.TrialStatus.COMPLETED, db.TrialStatus.DIVERGED)
    ]
    try:
        result = compute_transfer(outcomes, model=model, to_width=to_width)
    except ValueError as e:
        raise InvalidInput("sweep_id", f"sweep {sweep_id}: {e}") from None
    transfer_id = db.create_transfer(
        database, sweep_id=sweep_id, to_width=to_width, result=result.to_dict()
    )
    return transfer_id, result


def _sweep_or_latest(database: db.Database, sweep_id: int | None) -> int:
    if sweep_id is not None:
        return sweep_id
    latest = db.latest_completed_sweep(database)
    if latest is None:
        raise db.NotFound("no completed sweep to transfer from")
    return latest


@dataclass(frozen=True)
class RunProgress:
    run: db.Run
    curve: list[db.MetricPoint]


def launch_run(database: db.Database, request: LaunchRequest) -> db.Run:
    """Transfer the sweep's optimum (the latest completed sweep's when the request names
    none) to the target width and start the full-size run."""
    sweep_id = _sweep_or_latest(database, request.sweep_id)
    request = request.model_copy(update={"sweep_id": sweep_id})  # stored as it ran
    transfer_id, result = transfer(database, sweep_id=sweep_id, to_width=request.to_width)
    spec = SweepSpec.stored(db.get_sweep(database, sweep_id=sweep_id).spec)
    try:
        config = launch_config(spec, result, request)
    except ValueError as e:  # a pydantic ValidationError is one too
        raise InvalidInput("launch", str(e)) from None
    name = request.name or f"{spec.name} @ width {request.to_width}"
    run_id = db.create_run(
        database,
        name=name,
        config={"launch": request.model_dump(mode="json"), "train": config.model_dump(mode="json")},
        sweep_id=sweep_id,
        transfer_id=transfer_id,
    )
    launch_driver(database, "run", run_id)
    return db.get_run(database, run_id=run_id)


def run_progress(database: db.Database, run_id: int) -> RunProgress:
    return RunProgress(
        run=db.get_run(database, run_id=run_id), curve=db.get_run_curve(database, run_id=run_id)
    )


def list_runs(database: db.Database, *, offset: int = 0, limit: int = 50) -> db.Page[db.Run]:
    return db.list_runs(database, offset=offset, limit=limit)


def cancel_run(database: db.Database, run_id: int) -> db.Run:
    """Mark the run cancelled; its workers stop at their next report. Checkpoints stay."""
    _check_cancellable("run", db.get_run(database, run_id=run_id))
    return db.set_run_status(
        database, run_id=run_id, status=db.JobStatus.CANCELLED, expected=CANCELLABLE
    )


def compare_sweeps(database: db.Database, sweep_ids: Sequence[int]) -> list[SweepComparison]:
    """Sweeps side by side (`sweeper.compare`), in the order asked: each width's LR curve and
    fitted optimum, the drift line out to every width the sweep was transferred to, and
    those transfers."""
    comparisons = []
    for sweep_id in sweep_ids:
        progress = sweep_progress(database, sweep_id)
        transfers = db.list_transfers(database, sweep_id=sweep_id)
        comparisons.append(compare_sweep(progress.sweep, progress.spec, progress.trials, transfers))
    return comparisons
