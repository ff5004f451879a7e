"""Every read and write of the sweeper database, as keyword-only functions.

Each function runs one transaction of its own (`Database.session`) and returns plain
frozen dataclasses, never ORM rows, so callers hold no session and cannot lazy-load.

Resume is the reason for most choices here:

- a trial is identified by (sweep, key), the engine's deterministic name of it, so
  `upsert_trial` called again on resume finds the same trial;
- a trial that had not finished when the driver died (`running`, or `error`) is run again
  from step 0, so `upsert_trial` resets it and deletes its points: the stored curve is then
  exactly that of the attempt that finishes, with no stale tail from the crashed one;
- a run resumes from its checkpoint instead, so its points are kept, and
  `add_metric_points` skips a point whose (trial or run, step) is already stored: writing
  a point twice stores it once and is not an error.

NaN and ±inf are stored as NULL (see `db._schema.FiniteFloat`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db._database import Database
from db._schema import (
    MAX_ID,
    Base,
    JobStatus,
    MetricPointRow,
    RunRow,
    SweepRow,
    TransferRow,
    TrialRow,
    TrialStatus,
    utcnow,
)
from db.errors import Conflict, NotFound

T = TypeVar("T")


# --- read types -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Sweep:
    id: int
    name: str
    status: JobStatus
    spec: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    driver_heartbeat_at: datetime | None
    optuna_study_name: str | None
    driver_host: str | None
    driver_pid: int | None
    auto_resumes: int
    data: dict[str, Any] | None  # what it trains on; None for sweeps stored before 0004


@dataclass(frozen=True, kw_only=True)
class Trial:
    id: int
    sweep_id: int
    key: str
    width: int
    params: dict[str, Any]
    status: TrialStatus
    final_eval_loss: float | None  # None while running, or when not finite
    steps: int | None
    tokens: int | None
    tokens_per_s: float | None  # steady state: startup excluded
    startup_s: float | None  # seconds before the first steady-state step
    node_id: str | None
    ray_trial_id: str | None
    error: str | None
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, kw_only=True)
class MetricPoint:
    """One point of a loss curve; what the trainer reports and what curves are made of."""

    step: int
    tokens: int
    train_loss: float | None  # None when not finite
    eval_loss: float | None = None  # None when not measured at this step, or not finite
    tokens_per_s: float | None = None  # steady state: startup excluded
    startup_s: float | None = None  # seconds before the first steady-state step
    time_s: float  # seconds since the trial (or run) started


@dataclass(frozen=True, kw_only=True)
class Transfer:
    id: int
    sweep_id: int
    to_width: int
    result: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class Run:
    id: int
    sweep_id: int | None
    transfer_id: int | None
    name: str
    status: JobStatus
    config: dict[str, Any]
    checkpoint_path: str | None
    restarts: int
    resumed_from_step: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    driver_heartbeat_at: datetime | None
    driver_host: str | None
    driver_pid: int | None
    auto_resumes: int
    data: dict[str, Any] | None  # what it trains on; None for runs stored before 0004


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing, newest first, and how many rows the whole listing has."""

    items: list[T]
    total: int


# --- sweeps -----------------------------------------------------------------------------


def create_sweep(
    database: Database,
    *,
    name: str,
    spec: Mapping[str, Any],
    data: Mapping[str, Any] | None = None,
) -> int:
    """Store a new `queued` sweep with its whole spec and the identity of its data; returns
    its id. Its driver's grace period starts now (the heartbeat is set to the creation
    time)."""
    with database.session(f"creating sweep {name!r}") as s:
        now = utcnow()
        row = SweepRow(
            name=name,
            status=JobStatus.QUEUED,
            spec=dict(spec),
            data=None if data is None else dict(data),
            created_at=now,
            driver_heartbeat_at=now,
            auto_resumes=0,
        )
        s.add(row)
        s.flush()
        return row.id


def get_sweep(database: Database, *, sweep_id: int) -> Sweep:
    with database.session(f"reading sweep {sweep_id}", read_only=True) as s:
        return _record(Sweep, _get(s, SweepRow, sweep_id))


def list_sweeps(
    database: Database, *, offset: int = 0, limit: int = 50, status: JobStatus | None = None
) -> Page[Sweep]:
    """Sweeps newest first, optionally only those in `status`."""
    query = select(SweepRow)
    if status is not None:
        query = query.where(SweepRow.status == JobStatus(status))
    with database.session("listing sweeps", read_only=True) as s:
        rows, total = _page(s, query, SweepRow.id, offset=offset, limit=limit)
        return Page([_record(Sweep, row) for row in rows], total)


@dataclass(frozen=True, kw_only=True)
class SweepCount:
    """A sweep and how many of its trials have a result (`TrialStatus.finished`)."""

    sweep: Sweep
    finished_trials: int


def list_sweep_counts(database: Database, *, offset: int = 0, limit: int = 50) -> Page[SweepCount]:
    """Sweeps newest first with their finished trials counted: one grouped query, the
    listing that the dashboard polls."""
    finished = [str(status) for status in TrialStatus if status.finished]
    count = func.count(TrialRow.id).filter(TrialRow.status.in_(finished))
    _check_window(offset, limit)
    with database.session("listing sweeps", read_only=True) as s:
        total = s.scalar(select(func.count()).select_from(SweepRow)) or 0
        rows = s.execute(
            select(SweepRow, count)
            .outerjoin(TrialRow, TrialRow.sweep_id == SweepRow.id)
            .group_by(SweepRow.id)
            .order_by(SweepRow.id.desc())
            .offset(offset)
            .limit(limit)
        ).all()
        items = [SweepCount(sweep=_record(Sweep, row), finished_trials=n) for row, n in rows]
        return Page(items, total)


def set_sweep_status(
    database: Database,
    *,
    sweep_id: int,
    status: JobStatus,
    error: str | None = None,
    expected: Collection[JobStatus] | None = None,
    expected_heartbeat: datetime | None = None,
    automatic: bool = False,
) -> Sweep:
    """Move a sweep to `status` and return it.

    `running` sets `started_at` (the first start; a resume keeps it) and clears
    `finished_at`; a final status sets `finished_at`. `error` replaces the stored one, so
    any status but `failed` normally clears it. With `expected`, the change happens only
    if the sweep is in one of those statuses, else `Conflict`: e.g. a driver finishing must
    not overwrite a cancel that the API stored meanwhile.

    With `expected_heartbeat`, the change happens only if the driver's heartbeat is still
    that one, else `Conflict`: whoever found the driver gone takes the job over only if it
    did not beat since, and if no one else took it over first (queuing resets the beat).

    `queued` starts a driver's grace period (the heartbeat is set to now) and forgets the
    driver's process; `automatic` counts it as the watchdog's resume (`auto_resumes`),
    any other queuing resets that count.

    `failed` and `cancelled` close the sweep's `running` trials in the same transaction
    (`close_running_trials`: as errors saying why the sweep failed, or cancelled), so that
    no reader sees a stopped sweep with a trial still running.
    """
    status = JobStatus(status)
    with database.session(f"setting sweep {sweep_id} to {status}") as s:
        row = _get(s, SweepRow, sweep_id, for_update=True)
        _move_job(row, f"sweep {sweep_id}", status, error, expected, expected_heartbeat, automatic)
        if status is JobStatus.FAILED:
            _close_running_trials(s, sweep_id, TrialStatus.ERROR, f"the sweep failed: {error}")
        elif status is JobStatus.CANCELLED:
            _close_running_trials(s, sweep_id, TrialStatus.CANCELLED, None)
        s.flush()
        return _record(Sweep, row)


def set_sweep_driver(database: Database, *, sweep_id: int, host: str, pid: int) -> None:
    """Record the process (host and pid) that drives the sweep from now on."""
    _set_driver(database, SweepRow, sweep_id, host, pid)


def touch_sweep_heartbeat(database: Database, *, sweep_id: int) -> None:
    """Record that the sweep's driving process is alive (call it every few seconds)."""
    _touch(database, SweepRow, sweep_id)


def set_sweep_optuna_study(database: Database, *, sweep_id: int, study_name: str) -> None:
    """Link the sweep to its Optuna study (stored by Optuna's RDBStorage in the same DB)."""
    with database.session(f"linking sweep {sweep_id} to study {study_name!r}") as s:
        _get(s, SweepRow, sweep_id).optuna_study_name = study_name


def delete_sweep(database: Database, *, sweep_id: int) -> None:
    """Delete a sweep with its trials, their points and its transfers.

    Runs launched from it are kept (they hold checkpoints) and lose the link. The Optuna
    study, if any, is Optuna's to delete.
    """
    with database.session(f"deleting sweep {sweep_id}") as s:
        _get(s, SweepRow, sweep_id)
        s.execute(delete(SweepRow).where(SweepRow.id == sweep_id))


def latest_completed_sweep(database: Database) -> int | None:
    """The id of the sweep that completed last, or None when none has."""
    query = (
        select(SweepRow.id)
        .where(SweepRow.status == JobStatus.COMPLETED)
        .order_by(SweepRow.finished_at.desc(), SweepRow.id.desc())
        .limit(1)
    )
    with database.session("finding the latest completed sweep", read_only=True) as s:
        return s.scalars(query).first()


# --- trials -----------------------------------------------------------------------------


def upsert_trial(
    database: Database,
    *,
    sweep_id: int,
    key: str,
    width: int,
    params: Mapping[str, Any],
    ray_trial_id: str | None = None,
    node_id: str | None = None,
) -> int:
    """Start trial `key` of a sweep and return its id; idempotent on (sweep, key).

    A new key is stored as `running`. An existing key keeps its id: if it finished
    (`completed`, `diverged`, `pruned`) nothing changes, and the caller should not run it
    again (see `get_trial`); otherwise it is reset to `running` and its points are deleted,
    since it is about to be trained again from step 0.
    """
    with database.session(f"starting trial {key!r} of sweep {sweep_id}") as s:
        _get(s, SweepRow, sweep_id)
        # Insert-or-skip in one statement, so two writers racing on a key cannot conflict.
        inserted = s.execute(
            _insert(s, TrialRow)
            .values(
                sweep_id=sweep_id,
                key=key,
                width=width,
                params=dict(params),
                status=TrialStatus.RUNNING,
                ray_trial_id=ray_trial_id,
                node_id=node_id,
                created_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["sweep_id", "key"])
            .returning(TrialRow.id)
        ).scalar_one_or_none()
        if inserted is not None:
            return inserted

        row = s.scalars(
            select(TrialRow).where(TrialRow.sweep_id == sweep_id, TrialRow.key == key)
        ).one()
        if not row.status.finished:
            s.execute(delete(MetricPointRow).where(MetricPointRow.trial_id == row.id))
            row.status = TrialStatus.RUNNING
            row.final_eval_loss = row.steps = row.tokens = row.tokens_per_s = row.startup_s = None
            row.error = row.finished_at = None
            row.ray_trial_id = ray_trial_id
            row.node_id = node_id
        return row.id


def get_trial(database: Database, *, trial_id: int) -> Trial:
    with database.session(f"reading trial {trial_id}", read_only=True) as s:
        return _record(Trial, _get(s, TrialRow, trial_id))


def finish_trial(
    database: Database,
    *,
    trial_id: int,
    status: TrialStatus,
    final_eval_loss: float | None,
    steps: int,
    tokens: int,
    tokens_per_s: float | None,
    startup_s: float | None = None,
    error: str | None = None,
    node_id: str | None = None,
) -> None:
    """Store a trial's outcome. A non-finite loss is stored as None (status says why)."""
    status = TrialStatus(status)
    if status is TrialStatus.RUNNING:
        raise ValueError("finish_trial needs a final status, not 'running'")
    with database.session(f"finishing trial {trial_id} as {status}") as s:
        row = _get(s, TrialRow, trial_id)
        row.status = status
        row.final_eval_loss = final_eval_loss
        row.steps = steps
        row.tokens = tokens
        row.tokens_per_s = tokens_per_s
        row.startup_s = startup_s
        row.error = error
        row.finished_at = utcnow()
        if node_id is not None:
            row.node_id = node_id


def close_running_trials(
    database: Database, *, sweep_id: int, status: TrialStatus, error: str | None = None
) -> int:
    """End every trial of the sweep still `running` in ``status`` (a sweep that stopped, by
    a cancel or a failure), with its steps and tokens from its last point; returns how many.
    Neither is a result, so a resume runs them again."""
    status = TrialStatus(status)
    if status.finished or status is TrialStatus.RUNNING:
        raise ValueError(f"close_running_trials needs cancelled or error, not {status!r}")
    with database.session(f"closing the running trials of sweep {sweep_id}") as s:
        _get(s, SweepRow, sweep_id)
        return _close_running_trials(s, sweep_id, status, error)


def _close_running_trials(
    session: Session, sweep_id: int, status: TrialStatus, error: str | None
) -> int:
    running = session.scalars(
        select(TrialRow).where(
            TrialRow.sweep_id == sweep_id, TrialRow.status == TrialStatus.RUNNING
        )
    ).all()
    for row in running:
        point = session.scalars(
            select(MetricPointRow)
            .where(MetricPointRow.trial_id == row.id)
            .order_by(MetricPointRow.step.desc())
            .limit(1)
        ).first()
        row.status, row.error, row.finished_at = status, error, utcnow()
        row.steps = point.step if point else 0
        row.tokens = point.tokens if point else 0
        row.final_eval_loss = point.eval_loss if point else None
        row.tokens_per_s = point.tokens_per_s if point else None
        row.startup_s = point.startup_s if point else None
    return len(running)


def list_trials(
    database: Database, *, sweep_id: int, status: TrialStatus | None = None
) -> list[Trial]:
    """A sweep's trials in the order they were first started."""
    query = select(TrialRow).where(TrialRow.sweep_id == sweep_id).order_by(TrialRow.id)
    if status is not None:
        query = query.where(TrialRow.status == TrialStatus(status))
    with database.session(f"listing trials of sweep {sweep_id}", read_only=True) as s:
        _get(s, SweepRow, sweep_id)
        return [_record(Trial, row) for row in s.scalars(query)]


# --- metric points ----------------------------------------------------------------------


def add_metric_points(
    database: Database,
    *,
    trial_id: int | None = None,
    run_id: int | None = None,
    points: Iterable[MetricPoint | Mapping[str, Any]],
) -> None:
    """Store points of one trial's or one run's curve; a point already stored is skipped.

    A mapping may carry more keys than a `MetricPoint` has (a Ray Tune result does); only
    the point's own fields are read.
    """
    if (trial_id is None) == (run_id is None):
        raise ValueError("add_metric_points needs exactly one of trial_id and run_id")
    owner_column, owner_id = ("trial_id", trial_id) if run_id is None else ("run_id", run_id)
    rows = [{owner_column: owner_id, **dataclasses.asdict(_point(p))} for p in points]
    with database.session(f"adding {len(rows)} points to {owner_column[:-3]} {owner_id}") as s:
        if run_id is None:
            _get(s, TrialRow, trial_id)
        else:
            _get(s, RunRow, run_id)
        if rows:
            s.execute(
                _insert(s, MetricPointRow).on_conflict_do_nothing(
                    index_elements=[owner_column, "step"]
                ),
                rows,
            )


# The columns of a MetricPoint, selected as plain values: building ORM rows for every point
# of a sweep costs ~4x more, and the dashboard asks for curves every few seconds.
_POINT_COLUMNS = tuple(getattr(MetricPointRow, f.name) for f in dataclasses.fields(MetricPoint))


def get_curves(database: Database, *, sweep_id: int) -> dict[int, list[MetricPoint]]:
    """Every trial's points by trial id (trials in start order, points by step).

    One query for the whole sweep; a trial without points maps to an empty list.
    """
    query = (
        select(TrialRow.id, *_POINT_COLUMNS)
        .outerjoin(MetricPointRow, MetricPointRow.trial_id == TrialRow.id)
        .where(TrialRow.sweep_id == sweep_id)
        .order_by(TrialRow.id, MetricPointRow.step)
    )
    with database.session(f"reading curves of sweep {sweep_id}", read_only=True) as s:
        _get(s, SweepRow, sweep_id)
        curves: dict[int, list[MetricPoint]] = {}
        for trial_id, *values in s.execute(query):
            curve = curves.setdefault(trial_id, [])
            if values[0] is not None:  # the step: None for a trial without points
                curve.append(MetricPoint(**dict(zip(_POINT_FIELDS, values, strict=True))))
        return curves


def get_run_curve(database: Database, *, run_id: int) -> list[MetricPoint]:
    """A run's points by step."""
    query = select(*_POINT_COLUMNS).where(MetricPointRow.run_id == run_id)
    with database.session(f"reading the curve of run {run_id}", read_only=True) as s:
        _get(s, RunRow, run_id)
        rows = s.execute(query.order_by(MetricPointRow.step))
        return [MetricPoint(**dict(zip(_POINT_FIELDS, row, strict=True))) for row in rows]


# --- transfers --------------------------------------------------------------------------


def create_transfer(
    database: Database, *, sweep_id: int, to_width: int, result: Mapping[str, Any]
) -> int:
    """Store the transfer of a sweep's optimum to `to_width`; returns its id."""
    with database.session(f"storing a transfer of sweep {sweep_id} to width {to_width}") as s:
        _get(s, SweepRow, sweep_id)
        row = TransferRow(
            sweep_id=sweep_id, to_width=to_width, result=dict(result), created_at=utcnow()
        )
        s.add(row)
        s.flush()
        return row.id


def get_transfer(database: Database, *, transfer_id: int) -> Transfer:
    with database.session(f"reading transfer {transfer_id}", read_only=True) as s:
        return _record(Transfer, _get(s, TransferRow, transfer_id))


def list_transfers(database: Database, *, sweep_id: int) -> list[Transfer]:
    """A sweep's transfers, newest first."""
    query = select(TransferRow).where(TransferRow.sweep_id == sweep_id)
    with database.session(f"listing transfers of sweep {sweep_id}", read_only=True) as s:
        _get(s, SweepRow, sweep_id)
        rows = s.scalars(query.order_by(TransferRow.id.desc()))
        return [_record(Transfer, row) for row in rows]


# --- runs -------------------------------------------------------------------------------


def create_run(
    database: Database,
    *,
    name: str,
    config: Mapping[str, Any],
    sweep_id: int | None = None,
    transfer_id: int | None = None,
    data: Mapping[str, Any] | None = None,
) -> int:
    """Store a new `queued` run with the identity of its data; returns its id.

    With a `transfer_id` and no `sweep_id`, the run is linked to the transfer's sweep. Its
    driver's grace period starts now, as a sweep's.
    """
    with database.session(f"creating run {name!r}") as s:
        now = utcnow()
        if transfer_id is not None:
            transfer = _get(s, TransferRow, transfer_id)
            if sweep_id is None:
                sweep_id = transfer.sweep_id
            elif sweep_id != transfer.sweep_id:
                raise Conflict(
                    f"transfer {transfer_id} belongs to sweep {transfer.sweep_id}, "
                    f"not to sweep {sweep_id}"
                )
        if sweep_id is not None:
            _get(s, SweepRow, sweep_id)
        row = RunRow(
            name=name,
            status=JobStatus.QUEUED,
            config=dict(config),
            data=None if data is None else dict(data),
            sweep_id=sweep_id,
            transfer_id=transfer_id,
            restarts=0,
            created_at=now,
            driver_heartbeat_at=now,
            auto_resumes=0,
        )
        s.add(row)
        s.flush()
        return row.id


def get_run(database: Database, *, run_id: int) -> Run:
    with database.session(f"reading run {run_id}", read_only=True) as s:
        return _record(Run, _get(s, RunRow, run_id))


def list_runs(
    database: Database, *, offset: int = 0, limit: int = 50, status: JobStatus | None = None
) -> Page[Run]:
    """Runs newest first, optionally only those in `status`."""
    query = select(RunRow)
    if status is not None:
        query = query.where(RunRow.status == JobStatus(status))
    with database.session("listing runs", read_only=True) as s:
        rows, total = _page(s, query, RunRow.id, offset=offset, limit=limit)
        return Page([_record(Run, row) for row in rows], total)


def set_run_status(
    database: Database,
    *,
    run_id: int,
    status: JobStatus,
    error: str | None = None,
    expected: Collection[JobStatus] | None = None,
    expected_heartbeat: datetime | None = None,
    automatic: bool = False,
) -> Run:
    """Move a run to `status` and return it; the same rules as `set_sweep_status`."""
    status = JobStatus(status)
    with database.session(f"setting run {run_id} to {status}") as s:
        row = _get(s, RunRow, run_id, for_update=True)
        _move_job(row, f"run {run_id}", status, error, expected, expected_heartbeat, automatic)
        s.flush()
        return _record(Run, row)


def set_run_driver(database: Database, *, run_id: int, host: str, pid: int) -> None:
    """Record the process (host and pid) that drives the run from now on."""
    _set_driver(database, RunRow, run_id, host, pid)


def set_run_checkpoint(database: Database, *, run_id: int, checkpoint_path: str) -> None:
    """Record the run's latest checkpoint, the one a resume starts from."""
    with database.session(f"setting the checkpoint of run {run_id}") as s:
        _get(s, RunRow, run_id).checkpoint_path = checkpoint_path


def note_run_resumed(database: Database, *, run_id: int, step: int) -> None:
    """Count a restart of the run that resumed from the checkpoint of ``step``."""
    with database.session(f"noting a resume of run {run_id}") as s:
        row = _get(s, RunRow, run_id)
        row.restarts += 1
        row.resumed_from_step = step


def touch_run_heartbeat(database: Database, *, run_id: int) -> None:
    """Record that the run's driving process is alive."""
    _touch(database, RunRow, run_id)


# --- helpers ----------------------------------------------------------------------------

_Row = TypeVar("_Row", bound=Base)
_NOUN: dict[type[Base], str] = {
    SweepRow: "sweep",
    TrialRow: "trial",
    TransferRow: "transfer",
    RunRow: "run",
}
_RecordT = TypeVar("_RecordT")


def _get(
    session: Session, model: type[_Row], row_id: int | None, *, for_update: bool = False
) -> _Row:
    """The row, or NotFound. ``for_update`` locks it until the transaction ends (PostgreSQL;
    a SQLite write transaction holds the whole database already), so that a check of its
    state and the change that depends on it cannot interleave with another writer's."""
    row = None
    if row_id is not None and -MAX_ID <= row_id <= MAX_ID:
        row = session.get(model, row_id, with_for_update=for_update)
    if row is None:
        raise NotFound(f"{_NOUN[model]} {row_id} not found")
    return row


def _record(record_type: type[_RecordT], row: object) -> _RecordT:
    # Read types mirror their tables' columns by name, so one copy rule serves them all.
    fields = dataclasses.fields(record_type)  # type: ignore[arg-type]
    return record_type(**{f.name: getattr(row, f.name) for f in fields})


def _check_window(offset: int, limit: int) -> None:
    if not (0 <= offset <= MAX_ID and 1 <= limit <= MAX_ID):
        raise ValueError(f"need 0 <= offset and 1 <= limit, both < 2^63, got {offset=} {limit=}")


def _page(
    session: Session, query: Select[Any], order: Any, *, offset: int, limit: int
) -> tuple[Sequence[Any], int]:
    _check_window(offset, limit)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    rows = session.scalars(query.order_by(order.desc()).offset(offset).limit(limit)).all()
    return rows, total or 0


def _move_job(
    row: SweepRow | RunRow,
    what: str,
    status: JobStatus,
    error: str | None,
    expected: Collection[JobStatus] | None,
    expected_heartbeat: datetime | None,
    automatic: bool,
) -> None:
    if expected is not None and row.status not in expected:
        raise Conflict(f"{what} is {row.status}, not {' or '.join(sorted(expected))}")
    if expected_heartbeat is not None and row.driver_heartbeat_at != expected_heartbeat:
        raise Conflict(f"{what}: its driver beat since, or another process took it over")
    now = utcnow()
    if status is JobStatus.RUNNING and row.started_at is None:
        row.started_at = now
    if status is JobStatus.QUEUED:  # a driver is starting: its grace period begins now
        row.driver_heartbeat_at = now
        row.driver_host = row.driver_pid = None
        row.auto_resumes = row.auto_resumes + 1 if automatic else 0
    row.finished_at = now if status.finished else None
    row.error = error
    row.status = status


def _set_driver(
    database: Database, model: type[SweepRow] | type[RunRow], row_id: int, host: str, pid: int
) -> None:
    with database.session(f"recording the driver of {_NOUN[model]} {row_id}") as s:
        row = _get(s, model, row_id)
        row.driver_host, row.driver_pid = host, pid


def _touch(database: Database, model: type[SweepRow] | type[RunRow], row_id: int) -> None:
    with database.session(f"heartbeat of {_NOUN[model]} {row_id}") as s:
        _get(s, model, row_id).driver_heartbeat_at = utcnow()


_POINT_FIELDS = tuple(f.name for f in dataclasses.fields(MetricPoint))


def _point(point: MetricPoint | Mapping[str, Any]) -> MetricPoint:
    if isinstance(point, MetricPoint):
        return point
    return MetricPoint(**{f: point[f] for f in _POINT_FIELDS if f in point})


def _insert(session: Session, model: type[TrialRow] | type[MetricPointRow]) -> Any:
    # ON CONFLICT DO NOTHING is spelled the same on both backends but lives in each
    # dialect's own insert(); `Database` admits no other backend.
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(model)
