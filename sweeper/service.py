"""The service layer: what the CLI and the REST API both call, and all they import (with
the types it re-exports below). They stay thin shells: each call takes the caller's
`Settings` (read once per process; a fresh `Settings()` when none is given) and returns the
read models of `sweeper.views`, which both serialise as they are.

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
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import platformdirs
from pydantic import ValidationError

import db
from db import (
    MAX_ID,
    MAX_INT,
    Conflict,
    Database,
    JobStatus,
    MetricPoint,
    NotFound,
    StorageError,
    TrialStatus,
    Unavailable,
    connect,
)
from models import PRESETS, ModelConfig, TrainConfig
from models.config import PRECISIONS, preset
from models.data import DataError, DataIdentity, data_identity
from models.prepare import DTYPE_CHOICES, DtypeChoice, PrepareError, prepare
from sweeper.compare import compare_sweep, trial_outcomes
from sweeper.jobs import (
    ACTIVE,
    Job,
    JobKind,
    JobRecord,
    Periodic,
    driver_gone,
    last_beat,
    this_host,
)
from sweeper.launch_request import LaunchRequest, launch_config
from sweeper.settings import Settings, is_loopback
from sweeper.spec import SweepSpec
from sweeper.transfer import MAX_TOKENS, TransferResult, compute_transfer, data_warnings
from sweeper.views import (
    Comparison,
    JobView,
    LrPoint,
    Page,
    RunMetrics,
    RunView,
    SweepComparison,
    SweepCreated,
    SweepCurves,
    SweepDetail,
    SweepSummary,
    TransferView,
    TrialCurve,
    TrialView,
    WidthCurve,
    stored_identity,
)
from sweeper.views import is_stale as _is_stale

if TYPE_CHECKING:  # for annotations, here and in the CLI: their modules import torch
    from models.coord_check import CoordCheck
    from models.train import Reporter, TrainResult

# `sweeper.cluster` (Ray: a second of import, more on a busy machine) is imported where a
# job starts: every other command (`--help`, a bad option, a status) would pay for it.

# What the CLI and the API may use besides the functions below (the import contract in
# pyproject.toml lets them import this module and nothing under it).
__all__ = [
    "DTYPE_CHOICES",
    "MAX_ID",
    "MAX_INT",
    "MAX_TOKENS",
    "PRECISIONS",
    "PRESETS",
    "Comparison",
    "Conflict",
    "DataError",
    "DataIdentity",
    "Database",
    "JobKind",
    "JobRecord",
    "JobStatus",
    "JobView",
    "LaunchRequest",
    "MetricPoint",
    "ModelConfig",
    "NotFound",
    "Page",
    "Periodic",
    "RunMetrics",
    "RunView",
    "Settings",
    "StorageError",
    "SweepComparison",
    "SweepCreated",
    "SweepCurves",
    "SweepDetail",
    "SweepSpec",
    "SweepSummary",
    "TrainConfig",
    "TransferResult",
    "TransferView",
    "TrialStatus",
    "TrialView",
    "Unavailable",
    "connect",
    "is_loopback",
    "preset",
]


class InvalidInput(ValueError):
    """A request the service refuses, naming the field at fault (HTTP 422, CLI exit 2)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def open_database(settings: Settings) -> db.Database:
    """The database the settings name (migrated), its folder made for the default file."""
    if settings.db_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return db.connect(settings.database_url)


# --- models, for `sweeper train` and `sweeper coord-check` ------------------------------
# The trainer and the coord check are imported by the calls that run them, not with this
# module: they import torch, seconds of CPU that no other command (nor the API) needs.


def train_config(preset_name: str, overrides: dict[str, object]) -> TrainConfig:
    """A preset's model with overrides of any ModelConfig or TrainConfig field (ValueError
    for an unknown preset; pydantic's ValidationError naming the field)."""
    return TrainConfig(model=preset(preset_name)).with_overrides(overrides)


def train(config: TrainConfig, report: Reporter | None = None) -> TrainResult:
    """Train ``config`` in this process (`models.train.train`); ``report`` gets each point."""
    import models.train

    return models.train.train(config, report)


def coord_check(widths: Sequence[int], base: TrainConfig, *, steps: int) -> CoordCheck:
    """Per-layer RMS across ``widths`` at init and after ``steps`` steps, in this process
    (`models.coord_check.coord_check`)."""
    import models.coord_check

    return models.coord_check.coord_check(widths, base, steps=steps)


def plot_coord_check(result: CoordCheck, path: Path) -> None:
    """Save `coord_check`'s RMS-vs-width plots to the PNG ``path``."""
    import models.coord_check

    models.coord_check.plot_coord_check(result, path)


# --- datasets, for `sweeper data prepare` -------------------------------------------------


def prepare_data(
    inputs: Sequence[Path],
    *,
    tokenizer: str,
    out: Path,
    vocab_size: int | None = None,
    text_field: str = "text",
    dtype: str = "auto",
) -> DataIdentity:
    """Tokenize local text files into the prepared directory ``out`` (`models.prepare`) and
    return its identity. Bad arguments raise InvalidInput on the argument at fault
    (``inputs``, ``out``, ``vocab_size``, ``text_field``, ``dtype``); unreadable data
    raises DataError."""
    if dtype not in DTYPE_CHOICES:
        choices = ", ".join(DTYPE_CHOICES[:-1]) + f" or {DTYPE_CHOICES[-1]}"
        raise InvalidInput("dtype", f"{dtype!r} is not {choices}")
    try:
        return prepare(
            inputs,
            tokenizer=tokenizer,
            out=out,
            vocab_size=vocab_size,
            text_field=text_field,
            dtype=typing.cast(DtypeChoice, dtype),
        )
    except PrepareError as e:
        raise InvalidInput(e.field, str(e)) from None


# --- sweeps -----------------------------------------------------------------------------

# A tiny µS sweep that runs on a CPU (`examples/debug_sweep.yaml` links here): the README's
# first command, and the defaults of the dashboard's new-sweep form.
EXAMPLE_SPEC = Path(__file__).resolve().parent / "examples" / "debug_sweep.yaml"


def example_spec() -> SweepSpec:
    return SweepSpec.load(EXAMPLE_SPEC)


@dataclass(frozen=True)
class SweepProgress:
    """A sweep with everything its views are made of."""

    sweep: db.Sweep
    spec: SweepSpec
    trials: list[db.Trial]
    planned: int
    stale: bool  # active, and its driver is gone (see `is_stale`)
    settings: Settings

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

    def summary(self) -> SweepSummary:
        return SweepSummary.of(self.sweep, self.finished, self.settings)

    def detail(self) -> SweepDetail:
        best = {w: TrialView.of(t) for w, t in self.best_per_width().items()}
        return SweepDetail(
            **dict(self.summary()), spec=self.spec.model_dump(mode="json"), best=best
        )


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


def launch_driver(
    database: db.Database, kind: JobKind, job_id: int, settings: Settings | None = None
) -> Path:
    """Start the detached process that drives a sweep or a run, and record it on the job
    (host and pid: a watchdog on this host sees it exit); returns its log file. The driver
    gets these settings and this database as its environment, and no other SWEEPER_*."""
    settings = settings or Settings()
    inherited = {k: v for k, v in os.environ.items() if k not in Settings.variables()}
    log_path = driver_log(kind, job_id)
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "sweeper.driver", kind, str(job_id)],
            env=inherited | settings.driver_environment(database.url),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the CLI call or the API request that started it
        )
    Job(database, kind, job_id, settings).set_driver(this_host(), process.pid)
    return log_path


def start_sweep(
    database: db.Database, spec: SweepSpec, settings: Settings | None = None
) -> SweepCreated:
    """Store the sweep as queued and start its driver. A trial that could never run on the
    driver's local cluster (`cluster.local_node()`) is refused now: queued, it would wait for
    ever. (A driver that joins a configured cluster checks there, and fails at once.)"""
    settings = settings or Settings()
    if settings.ray_address is None:
        from sweeper import cluster

        problem = cluster.trial_shortfall(spec.resources, [cluster.local_node()])
        if problem is not None:
            raise InvalidInput(*problem)
    data = identify_data(spec.train.data, "train.data")
    sweep_id = db.create_sweep(
        database, name=spec.name, spec=spec.model_dump(mode="json"), data=data.model_dump()
    )
    launch_driver(database, "sweep", sweep_id, settings)
    sweep = db.get_sweep(database, sweep_id=sweep_id)
    return SweepCreated(id=sweep.id, name=sweep.name, status=sweep.status)


def sweep_progress(
    database: db.Database, sweep_id: int, settings: Settings | None = None
) -> SweepProgress:
    settings = settings or Settings()
    sweep = db.get_sweep(database, sweep_id=sweep_id)
    spec = SweepSpec.stored(sweep.spec)
    trials = db.list_trials(database, sweep_id=sweep_id)
    return SweepProgress(
        sweep=sweep,
        spec=spec,
        trials=trials,
        planned=len(spec.plan()),
        stale=_is_stale("sweep", sweep, settings),
        settings=settings,
    )


def get_sweep(
    database: db.Database, sweep_id: int, settings: Settings | None = None
) -> SweepDetail:
    return sweep_progress(database, sweep_id, settings).detail()


def list_sweeps(
    database: db.Database, *, offset: int = 0, limit: int = 50, settings: Settings | None = None
) -> Page[SweepSummary]:
    """Sweeps newest first, each with its progress (one grouped query for the page)."""
    settings = settings or Settings()
    page = db.list_sweep_counts(database, offset=offset, limit=limit)
    items = [SweepSummary.of(c.sweep, c.finished_trials, settings) for c in page.items]
    return Page(items=items, total=page.total, offset=offset, limit=limit)


def list_trials(
    database: db.Database, sweep_id: int, *, offset: int = 0, limit: int = 50
) -> Page[TrialView]:
    """A sweep's trials in the order they started."""
    trials = db.list_trials(database, sweep_id=sweep_id)
    window = trials[offset : offset + limit]
    return Page(
        items=[TrialView.of(t) for t in window], total=len(trials), offset=offset, limit=limit
    )


def cancel_sweep(
    database: db.Database, sweep_id: int, settings: Settings | None = None
) -> SweepSummary:
    """Mark the sweep cancelled; its driver sees that within a second and stops its trials.
    What was recorded stays; trials still `running` are closed as cancelled with it
    (`db.set_sweep_status`), so none is left running when the driver is gone too."""
    settings = settings or Settings()
    _check_cancellable("sweep", db.get_sweep(database, sweep_id=sweep_id))
    _job(database, "sweep", sweep_id, settings).move(db.JobStatus.CANCELLED, expected=ACTIVE)
    return sweep_progress(database, sweep_id, settings).summary()


def _job(database: db.Database, kind: JobKind, job_id: int, settings: Settings) -> Job:
    return Job(database, kind, job_id, settings)


def _check_cancellable(kind: JobKind, job: JobRecord) -> None:
    if job.status not in ACTIVE:
        raise db.Conflict(f"{kind} {job.id} is {job.status}: nothing to cancel")


def is_stale(kind: JobKind, job: JobRecord, settings: Settings | None = None) -> bool:
    """Whether the job should have a live driver (queued or running) and has none: its
    process exited, or it stopped beating (`sweeper.jobs.driver_gone`)."""
    return _is_stale(kind, job, settings or Settings())


def resume_sweep(
    database: db.Database, sweep_id: int, settings: Settings | None = None
) -> SweepSummary:
    """Continue a sweep whose driver died, or that failed or was cancelled: finished trials
    are kept, the rest run (again)."""
    settings = settings or Settings()
    _resume(database, "sweep", db.get_sweep(database, sweep_id=sweep_id), settings)
    return sweep_progress(database, sweep_id, settings).summary()


def resume_run(database: db.Database, run_id: int, settings: Settings | None = None) -> RunView:
    """Continue a run whose driver died, or that failed or was cancelled, from its latest
    checkpoint (Ray Train finds it under the run's name in its storage path)."""
    settings = settings or Settings()
    _resume(database, "run", db.get_run(database, run_id=run_id), settings)
    return RunView.of(db.get_run(database, run_id=run_id), settings)


def _resume(
    database: db.Database,
    kind: JobKind,
    job: JobRecord,
    settings: Settings,
    *,
    automatic: bool = False,
) -> None:
    _check_resumable(kind, job, settings)
    # Queued at once (not when the driver starts), so a watcher does not read the old final
    # status as the end; queuing also restarts the heartbeat's grace period. Only if its
    # heartbeat is still the one judged: a driver that beat since, or another service that
    # resumed it first, wins.
    _job(database, kind, job.id, settings).move(
        db.JobStatus.QUEUED,
        expected=frozenset({job.status}),
        expected_heartbeat=job.driver_heartbeat_at,
        automatic=automatic,
    )
    launch_driver(database, kind, job.id, settings)


def _check_resumable(kind: JobKind, job: JobRecord, settings: Settings) -> None:
    if job.status is db.JobStatus.COMPLETED:
        raise db.Conflict(f"{kind} {job.id} is completed: nothing to resume")
    if job.status in ACTIVE and not driver_gone(kind, job, settings):
        raise db.Conflict(f"{kind} {job.id} is {job.status} and its driver is alive")


def recover_jobs(database: db.Database, settings: Settings | None = None) -> list[str]:
    """The watchdog's pass: every queued or running sweep and run whose driver is gone is
    resumed (a sweep re-runs its unfinished trials, a run continues from its checkpoint), or
    failed with the reason once the watchdog resumed it `max_auto_resumes` times in a row.
    The service runs it at start and then every heartbeat; returns what it did, as
    "resumed sweep 3", "failed run 1"."""
    settings = settings or Settings()
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
                _resume(database, kind, job, settings, automatic=True)
                done.append(f"resumed {kind} {job.id}")
            else:
                _give_up(database, kind, job, settings)
                done.append(f"failed {kind} {job.id}")
        except db.Conflict:  # it beat meanwhile, or another service process acted first
            continue
    return done


def _give_up(database: db.Database, kind: JobKind, job: JobRecord, settings: Settings) -> None:
    process = f"pid {job.driver_pid} on {job.driver_host}, " if job.driver_pid else ""
    reason = (
        f"the driver is gone ({process}last heartbeat {last_beat_text(job)})"
        f" after {job.auto_resumes} automatic resumes; see {driver_log(kind, job.id)}"
    )
    _job(database, kind, job.id, settings).move(
        db.JobStatus.FAILED,
        error=reason,
        expected=frozenset({job.status}),
        expected_heartbeat=job.driver_heartbeat_at,
    )  # a sweep's running trials are closed with it, as errors giving the reason


def last_beat_text(job: JobRecord) -> str:
    return f"{last_beat(job):%Y-%m-%d %H:%M:%S} UTC"


def transfer(
    database: db.Database,
    *,
    sweep_id: int | None,
    to_width: int,
    to_tokens: int | None = None,
    to_depth: int | None = None,
) -> TransferView:
    """Fit the sweep's proxies (the latest completed sweep when ``sweep_id`` is None),
    compute the target's values (at ``to_tokens`` training tokens and ``to_depth`` blocks
    when given) and store the result as a transfer record."""
    sweep_id = _sweep_or_latest(database, sweep_id)
    result = _fit_transfer(sweep_progress(database, sweep_id), to_width, to_tokens, to_depth)
    transfer_id = db.create_transfer(
        database, sweep_id=sweep_id, to_width=to_width, result=result.to_dict()
    )
    return TransferView(
        id=transfer_id, sweep_id=sweep_id, to_width=to_width, result=result.to_dict()
    )


def get_transfer(database: db.Database, transfer_id: int) -> TransferView:
    t = db.get_transfer(database, transfer_id=transfer_id)
    return TransferView(id=t.id, sweep_id=t.sweep_id, to_width=t.to_width, result=t.result)


def _fit_transfer(
    progress: SweepProgress, to_width: int, to_tokens: int | None, to_depth: int | None
) -> TransferResult:
    sweep_id = progress.sweep.id
    model = progress.spec.train.model
    if not 1 <= to_width <= MAX_INT or to_width % model.head_dim:
        raise InvalidInput(
            "to_width",
            f"{to_width} is not a multiple of head_dim ({model.head_dim}) in 1..{MAX_INT}",
        )
    if to_tokens is not None and not 1 <= to_tokens <= MAX_TOKENS:
        raise InvalidInput("to_tokens", f"{to_tokens} is not in 1..{MAX_TOKENS:.0e}")
    if to_depth is not None:
        try:
            model.model_validate(model.model_dump() | {"depth": to_depth})
        except ValidationError as e:
            reason = e.errors()[0]["msg"].removeprefix("Value error, ")
            raise InvalidInput("to_depth", f"{to_depth}: {reason}") from None
    try:
        result = compute_transfer(
            trial_outcomes(progress.trials, progress.spec),
            model=model,
            to_width=to_width,
            to_tokens=to_tokens,
            to_depth=to_depth,
        )
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


def sweep_curves(database: db.Database, sweep_id: int) -> SweepCurves:
    """The LR curves of each width and every trial's training curve (the dashboard's)."""
    # Progress first: a sweep read as finished here has all its points in the read below.
    progress = sweep_progress(database, sweep_id)
    points = db.get_curves(database, sweep_id=sweep_id)
    transfers = db.list_transfers(database, sweep_id=sweep_id)
    # Each width's line is what the transfer fits (`sweeper.transfer.transferred_slice`):
    # the longest horizon and the deepest depth swept, at that slice's best WD and tau.
    search = progress.spec.search
    transferred = (
        search.steps[-1] if search.steps else None,
        search.depth[-1] if search.depth else None,
    )
    widths = []
    for width in progress.spec.widths:
        at_width = [
            LrPoint(
                trial_id=t.id,
                lr=t.params["lr"],
                wd=t.params.get("wd", 0.0),
                tau=t.params.get("tau"),
                steps=t.params.get("steps"),
                depth=t.params.get("depth"),
                final_eval_loss=t.final_eval_loss,
                status=t.status,
            )
            for t in progress.trials
            if t.width == width and "lr" in t.params
        ]
        at_width.sort(key=lambda p: p.lr)
        in_slice = [
            p
            for p in at_width
            if p.final_eval_loss is not None
            and p.status is db.TrialStatus.COMPLETED
            and (p.steps, p.depth) == transferred
        ]
        best_point = min(in_slice, key=lambda p: p.final_eval_loss or 0.0, default=None)
        line = [
            p for p in in_slice if best_point and (p.wd, p.tau) == (best_point.wd, best_point.tau)
        ]
        widths.append(WidthCurve(width=width, line=line, points=at_width, best=best_point))
    trials = [TrialCurve.of(t, points.get(t.id, [])) for t in progress.trials]
    return SweepCurves(
        sweep_id=progress.sweep.id,
        status=progress.sweep.status,
        planned=progress.planned,
        finished=progress.finished,
        widths=widths,
        trials=trials,
        transfer=transfers[0].result if transfers else None,
    )


# --- runs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunProgress:
    run: db.Run
    curve: list[db.MetricPoint]
    stale: bool  # active, and its driver is gone (see `is_stale`)

    @property
    def data(self) -> DataIdentity | None:
        """What the run trains on; None for a run stored before it was kept."""
        return stored_identity(self.run.data)


def launch_run(
    database: db.Database, request: LaunchRequest, settings: Settings | None = None
) -> RunView:
    """Transfer the sweep's optimum (the latest completed sweep's when the request names
    none) to the target width and start the full-size run; a run whose workers could never
    all run at once on the driver's local cluster is refused (as in `start_sweep`). The
    transfer, at the run's tokens, also warns when the target's data or tokenizer differ
    from the proxies' (`sweeper.transfer.data_warnings`)."""
    settings = settings or Settings()
    if settings.ray_address is None:  # as in `start_sweep`
        from sweeper import cluster

        problem = cluster.run_shortfall(request, [cluster.local_node()])
        if problem is not None:
            raise InvalidInput(*problem)
    sweep_id = _sweep_or_latest(database, request.sweep_id)
    request = request.model_copy(update={"sweep_id": sweep_id})  # stored as it ran
    progress = sweep_progress(database, sweep_id, settings)
    # The run trains the sweep's batches and sequences for its own steps.
    to_tokens = request.steps * progress.spec.train.tokens_per_step
    result = _fit_transfer(progress, request.to_width, to_tokens, request.depth)
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
    warnings = data_warnings(progress.data, data)
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
    launch_driver(database, "run", run_id, settings)
    return RunView.of(db.get_run(database, run_id=run_id), settings)


def run_progress(
    database: db.Database, run_id: int, settings: Settings | None = None
) -> RunProgress:
    run = db.get_run(database, run_id=run_id)
    curve = db.get_run_curve(database, run_id=run_id)
    return RunProgress(run=run, curve=curve, stale=is_stale("run", run, settings))


def get_run(database: db.Database, run_id: int, settings: Settings | None = None) -> RunView:
    return RunView.of(db.get_run(database, run_id=run_id), settings or Settings())


def run_metrics(database: db.Database, run_id: int) -> RunMetrics:
    """The run's loss curve so far, as columns."""
    run = db.get_run(database, run_id=run_id)
    return RunMetrics.of(run, db.get_run_curve(database, run_id=run_id))


def list_runs(
    database: db.Database, *, offset: int = 0, limit: int = 50, settings: Settings | None = None
) -> Page[RunView]:
    settings = settings or Settings()
    page = db.list_runs(database, offset=offset, limit=limit)
    items = [RunView.of(r, settings) for r in page.items]
    return Page(items=items, total=page.total, offset=offset, limit=limit)


def cancel_run(database: db.Database, run_id: int, settings: Settings | None = None) -> RunView:
    """Mark the run cancelled; its workers stop at their next report. Checkpoints stay."""
    settings = settings or Settings()
    _check_cancellable("run", db.get_run(database, run_id=run_id))
    run = _job(database, "run", run_id, settings).move(db.JobStatus.CANCELLED, expected=ACTIVE)
    assert isinstance(run, db.Run)
    return RunView.of(run, settings)


def health(database: db.Database) -> str:
    """The database's backend (sqlite or postgresql) once it has answered a query."""
    db.list_sweeps(database, limit=1)  # a StorageError when it does not answer
    return database.backend


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
