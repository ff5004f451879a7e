"""The service layer: what the CLI and the REST API both call. They stay thin shells.

Sweeps and runs run in a driver process of their own (`python -m sweeper.driver KIND ID`),
never in the caller: starting returns at once with the id, after checking that the job can
run on the cluster at all. Whether a job's driver is gone is `sweeper.jobs`'s rule, so that
`resume_sweep`/`resume_run` and the service's watchdog (`recover_jobs`) continue exactly the
jobs whose driver died.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import ValidationError

import db
from models.data import DataError, DataIdentity, data_identity
from sweeper import cluster
from sweeper.compare import SweepComparison, compare_sweep, trial_outcomes
from sweeper.jobs import (
    ACTIVE,
    Job,
    JobKind,
    JobRecord,
    JobSettings,
    driver_gone,
    last_beat,
    this_host,
)
from sweeper.launch import MAX_INT, LaunchRequest, launch_config, resource_shortfall
from sweeper.spec import SweepSpec
from sweeper.transfer import TransferResult, compute_transfer, data_warnings


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
    stale: bool  # active, and its driver is gone (see `is_stale`)

    @property
    def finished(self) -> int:
        return sum(t.status.finished for t in self.trials)

    @property
    def data(self) -> DataIdentity | None:
        """What the sweep's trials train on; None for a sweep stored before it was kept."""
        return stored_identity(self.sweep.data)

    def best_per_width(self) -> dict[int, db.Trial]:
        """The trial with the lowest final eval loss at each width (finite losses only)."""
        best: dict[int, db.Trial] = {}
        for t in self.trials:
            if t.final_eval_loss is None or t.status is not db.TrialStatus.COMPLETED:
                continue
            if t.width not in best or t.final_eval_loss < (best[t.width].final_eval_loss or 0):
                best[t.width] = t
        return dict(sorted(best.items()))


def stored_identity(data: dict[str, Any] | None) -> DataIdentity | None:
    return None if data is None else DataIdentity.model_validate(data)


def identify_data(source: str, field: str) -> DataIdentity:
    """The identity of ``source`` (`models.data.data_identity`), or InvalidInput on
    ``field`` when it cannot be read."""
    try:
        return data_identity(source)
    except (DataError, OSError) as e:
        raise InvalidInput(field, str(e)) from None


def log_dir() -> Path:
    path = Path(platformdirs.user_log_dir("sweeper"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def driver_log(kind: JobKind, job_id: int) -> Path:
    """The log of a job's drivers on this host (each one appends to it)."""
    return log_dir() / f"{kind}-{job_id}.log"


def launch_driver(database: db.Database, kind: JobKind, job_id: int) -> Path:
    """Start the detached process that drives a sweep or a run, and record it on the job
    (host and pid: a watchdog on this host sees it exit); returns its log file."""
    log_path = driver_log(kind, job_id)
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "sweeper.driver", kind, str(job_id)],
            env=os.environ | {db.ENV_VAR: database.url},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the CLI call or the API request that started it
        )
    Job(database, kind, job_id, JobSettings()).set_driver(this_host(), process.pid)
    return log_path


def start_sweep(database: db.Database, spec: SweepSpec) -> db.Sweep:
    """Store the sweep as queued and start its driver. A trial that could never run on the
    driver's local cluster (`cluster.local_node()`) is refused now: queued, it would wait for
    ever. (A driver that joins a configured cluster checks there, and fails at once.)"""
    if cluster.configured_address() is None:
        problem = cluster.trial_shortfall(spec.resources, [cluster.local_node()])
        if problem is not None:
            raise InvalidInput(*problem)
    data = identify_data(spec.train.data, "train.data")
    sweep_id = db.create_sweep(
        database, name=spec.name, spec=spec.model_dump(mode="json"), data=data.model_dump()
    )
    launch_driver(database, "sweep", sweep_id)
    return db.get_sweep(database, sweep_id=sweep_id)


def sweep_progress(database: db.Database, sweep_id: int) -> SweepProgress:
    sweep = db.get_sweep(database, sweep_id=sweep_id)
    spec = SweepSpec.stored(sweep.spec)
    trials = db.list_trials(database, sweep_id=sweep_id)
    return SweepProgress(
        sweep=sweep,
        spec=spec,
        trials=trials,
        planned=len(spec.plan()),
        stale=is_stale("sweep", sweep),
    )


def list_sweeps(database: db.Database, *, offset: int = 0, limit: int = 50) -> db.Page[db.Sweep]:
    return db.list_sweeps(database, offset=offset, limit=limit)


def cancel_sweep(database: db.Database, sweep_id: int) -> db.Sweep:
    """Mark the sweep cancelled; its driver sees that within a second and stops its trials.
    What was recorded stays; trials still `running` are closed as cancelled now, so none is
    left running when the driver is gone too."""
    _check_cancellable("sweep", db.get_sweep(database, sweep_id=sweep_id))
    sweep = _job(database, "sweep", sweep_id).move(db.JobStatus.CANCELLED, expected=ACTIVE)
    db.close_running_trials(database, sweep_id=sweep_id, status=db.TrialStatus.CANCELLED)
    assert isinstance(sweep, db.Sweep)
    return sweep


def _job(database: db.Database, kind: JobKind, job_id: int) -> Job:
    return Job(database, kind, job_id, JobSettings())


def _check_cancellable(kind: JobKind, job: JobRecord) -> None:
    if job.status not in ACTIVE:
        raise db.Conflict(f"{kind} {job.id} is {job.status}: nothing to cancel")


def is_stale(kind: JobKind, job: JobRecord) -> bool:
    """Whether the job should have a live driver (queued or running) and has none: its
    process exited, or it stopped beating (`sweeper.jobs.driver_gone`)."""
    return job.status in ACTIVE and driver_gone(kind, job, JobSettings())


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


def _resume(
    database: db.Database, kind: JobKind, job: JobRecord, *, automatic: bool = False
) -> None:
    _check_resumable(kind, job)
    # Queued at once (not when the driver starts), so a watcher does not read the old final
    # status as the end; queuing also restarts the heartbeat's grace period. Only if its
    # heartbeat is still the one judged: a driver that beat since, or another service that
    # resumed it first, wins.
    _job(database, kind, job.id).move(
        db.JobStatus.QUEUED,
        expected=frozenset({job.status}),
        expected_heartbeat=job.driver_heartbeat_at,
        automatic=automatic,
    )
    launch_driver(database, kind, job.id)


def _check_resumable(kind: JobKind, job: JobRecord) -> None:
    if job.status is db.JobStatus.COMPLETED:
        raise db.Conflict(f"{kind} {job.id} is completed: nothing to resume")
    if job.status in ACTIVE and not driver_gone(kind, job, JobSettings()):
        raise db.Conflict(f"{kind} {job.id} is {job.status} and its driver is alive")


def recover_jobs(database: db.Database) -> list[str]:
    """The watchdog's pass: every queued or running sweep and run whose driver is gone is
    resumed (a sweep re-runs its unfinished trials, a run continues from its checkpoint), or
    failed with the reason once the watchdog resumed it `max_auto_resumes` times in a row.
    The service runs it at start and then every heartbeat; returns what it did, as
    "resumed sweep 3", "failed run 1"."""
    settings = JobSettings()
    # All listed before any is resumed: a resume moves a job to `queued`, a listed state.
    jobs: list[tuple[JobKind, JobRecord]] = []
    for status in ACTIVE:
        jobs += [("sweep", s) for s in db.list_sweeps(database, status=status, limit=10_000).items]
        jobs += [("run", r) for r in db.list_runs(database, status=status, limit=10_000).items]
    done = []
    for kind, job in jobs:
        if not driver_gone(kind, job, settings):
            continue
        try:
            if job.auto_resumes < settings.max_auto_resumes:
                _resume(database, kind, job, automatic=True)
                done.append(f"resumed {kind} {job.id}")
            else:
                _give_up(database, kind, job)
                done.append(f"failed {kind} {job.id}")
        except db.Conflict:  # it beat meanwhile, or another service process acted first
            continue
    return done


def _give_up(database: db.Database, kind: JobKind, job: JobRecord) -> None:
    process = f"pid {job.driver_pid} on {job.driver_host}, " if job.driver_pid else ""
    reason = (
        f"the driver is gone ({process}last heartbeat {last_beat_text(job)})"
        f" after {job.auto_resumes} automatic resumes; see {driver_log(kind, job.id)}"
    )
    _job(database, kind, job.id).move(
        db.JobStatus.FAILED,
        error=reason,
        expected=frozenset({job.status}),
        expected_heartbeat=job.driver_heartbeat_at,
    )
    if kind == "sweep":
        db.close_running_trials(
            database, sweep_id=job.id, status=db.TrialStatus.ERROR, error=reason
        )


def last_beat_text(job: JobRecord) -> str:
    return f"{last_beat(job):%Y-%m-%d %H:%M:%S} UTC"


def transfer(
    database: db.Database, *, sweep_id: int | None, to_width: int
) -> tuple[int, TransferResult]:
    """Fit the sweep's proxies (the latest completed sweep when ``sweep_id`` is None),
    compute the target width's values and store the result as a transfer record."""
    sweep_id = _sweep_or_latest(database, sweep_id)
    result = _fit_transfer(sweep_progress(database, sweep_id), to_width)
    transfer_id = db.create_transfer(
        database, sweep_id=sweep_id, to_width=to_width, result=result.to_dict()
    )
    return transfer_id, result


def _fit_transfer(progress: SweepProgress, to_width: int) -> TransferResult:
    sweep_id = progress.sweep.id
    model = progress.spec.train.model
    if not 1 <= to_width <= MAX_INT or to_width % model.head_dim:
        raise InvalidInput(
            "to_width",
            f"{to_width} is not a multiple of head_dim ({model.head_dim}) in 1..{MAX_INT}",
        )
    try:
        result = compute_transfer(trial_outcomes(progress.trials), model=model, to_width=to_width)
    except ValueError as e:
        raise InvalidInput("sweep_id", f"sweep {sweep_id}: {e}") from None
    return result


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
    stale: bool  # active, and its driver is gone (see `is_stale`)

    @property
    def data(self) -> DataIdentity | None:
        """What the run trains on; None for a run stored before it was kept."""
        return stored_identity(self.run.data)


def launch_run(database: db.Database, request: LaunchRequest) -> db.Run:
    """Transfer the sweep's optimum (the latest completed sweep's when the request names
    none) to the target width and start the full-size run; a run whose workers could never
    all run at once on the driver's local cluster is refused (as in `start_sweep`). The
    transfer record it stores also warns when the target's data, tokenizer or token
    horizon differ from the proxies' (`sweeper.transfer.data_warnings`)."""
    if cluster.configured_address() is None:  # as in `start_sweep`
        problem = resource_shortfall(request, [cluster.local_node()])
        if problem is not None:
            raise InvalidInput(*problem)
    sweep_id = _sweep_or_latest(database, request.sweep_id)
    request = request.model_copy(update={"sweep_id": sweep_id})  # stored as it ran
    progress = sweep_progress(database, sweep_id)
    result = _fit_transfer(progress, request.to_width)
    try:
        config = launch_config(progress.spec, result, request)
    except ValidationError as e:  # one line, on the field at fault where it has one
        first = e.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        field = ".".join(str(part) for part in first["loc"]) or "launch"
        if field == "launch" and message.startswith("data: "):  # TrainConfig's data check
            field, message = "data", message.removeprefix("data: ")
        raise InvalidInput(field, message) from None
    except ValueError as e:
        raise InvalidInput("launch", str(e)) from None
    data = identify_data(config.data, "data")
    proxy = progress.spec.train
    warnings = data_warnings(
        progress.data,
        data,
        proxy_tokens=proxy.steps * proxy.tokens_per_step,
        target_tokens=config.steps * config.tokens_per_step,
    )
    result = dataclasses.replace(result, warnings=[*result.warnings, *warnings])
    transfer_id = db.create_transfer(
        database, sweep_id=sweep_id, to_width=request.to_width, result=result.to_dict()
    )
    name = request.name or f"{progress.spec.name} @ width {request.to_width}"
    run_id = db.create_run(
        database,
        name=name,
        config={"launch": request.model_dump(mode="json"), "train": config.model_dump(mode="json")},
        sweep_id=sweep_id,
        transfer_id=transfer_id,
        data=data.model_dump(),
    )
    launch_driver(database, "run", run_id)
    return db.get_run(database, run_id=run_id)


def run_progress(database: db.Database, run_id: int) -> RunProgress:
    run = db.get_run(database, run_id=run_id)
    curve = db.get_run_curve(database, run_id=run_id)
    return RunProgress(run=run, curve=curve, stale=is_stale("run", run))


def list_runs(database: db.Database, *, offset: int = 0, limit: int = 50) -> db.Page[db.Run]:
    return db.list_runs(database, offset=offset, limit=limit)


def cancel_run(database: db.Database, run_id: int) -> db.Run:
    """Mark the run cancelled; its workers stop at their next report. Checkpoints stay."""
    _check_cancellable("run", db.get_run(database, run_id=run_id))
    run = _job(database, "run", run_id).move(db.JobStatus.CANCELLED, expected=ACTIVE)
    assert isinstance(run, db.Run)
    return run


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
