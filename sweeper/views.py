"""The read models: what the service returns about sweeps, trials, transfers and runs, and
what both the REST API and the CLI's ``--json`` serialise, so that a field has one name and
one shape everywhere (pagination included). Each is built from the storage's records by
one ``of`` classmethod; `sweeper.service` is the only caller."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

import db
from models.data import DataIdentity
from sweeper.jobs import JobKind, driver_gone
from sweeper.settings import Settings
from sweeper.spec import SweepSpec

T = TypeVar("T")


class View(BaseModel):
    model_config = ConfigDict(frozen=True)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: datetimes as ISO strings, enums as their values."""
        return self.model_dump(mode="json")


class Page(View, Generic[T]):
    """One page of a listing, newest first."""

    items: list[T]
    total: int = Field(description="rows in the whole listing")
    offset: int
    limit: int


def is_stale(kind: JobKind, job: db.Sweep | db.Run, settings: Settings) -> bool:
    """Whether the job should have a live driver (queued or running) and has none: its
    process exited, or it stopped beating (`sweeper.jobs.driver_gone`)."""
    return not job.status.finished and driver_gone(kind, job, settings)


def stored_identity(data: dict[str, Any] | None) -> DataIdentity | None:
    """A stored data identity (`db.Sweep.data`, `db.Run.data`); None for a job stored
    before revision 0004 kept it."""
    return None if data is None else DataIdentity.model_validate(data)


# --- sweeps -----------------------------------------------------------------------------


class SweepCreated(View):
    id: int
    name: str
    status: db.JobStatus


class SweepSummary(View):
    id: int
    name: str
    status: db.JobStatus
    stale: bool = Field(
        description="queued or running, but its driver is gone (its process exited or its"
        " heartbeat stopped): the service's watchdog resumes it"
    )
    planned: int = Field(description="trials in the plan")
    finished: int = Field(description="trials with a result (completed, diverged, pruned)")
    widths: list[int]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    driver_heartbeat_at: datetime | None = Field(description="its driver's last heartbeat")
    auto_resumes: int = Field(description="times the watchdog resumed it since its last start")
    error: str | None
    data: DataIdentity | None = Field(
        description="what its trials train on; null for a sweep stored before it was kept"
    )

    @classmethod
    def of(cls, sweep: db.Sweep, finished: int, settings: Settings) -> SweepSummary:
        spec = SweepSpec.stored(sweep.spec)
        return cls(
            id=sweep.id,
            name=sweep.name,
            status=sweep.status,
            stale=is_stale("sweep", sweep, settings),
            planned=len(spec.plan()),
            finished=finished,
            widths=spec.widths,
            created_at=sweep.created_at,
            started_at=sweep.started_at,
            finished_at=sweep.finished_at,
            driver_heartbeat_at=sweep.driver_heartbeat_at,
            auto_resumes=sweep.auto_resumes,
            error=sweep.error,
            data=stored_identity(sweep.data),
        )


class TrialView(View):
    id: int
    key: str
    width: int
    params: dict[str, Any]
    status: db.TrialStatus
    final_eval_loss: float | None
    steps: int | None
    tokens: int | None
    tokens_per_s: float | None = Field(description="steady state: startup excluded")
    startup_s: float | None = Field(description="seconds before the first steady-state step")
    node_id: str | None
    error: str | None
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, trial: db.Trial) -> TrialView:
        return cls.model_validate(trial, from_attributes=True)


class SweepDetail(SweepSummary):
    spec: dict[str, Any]
    best: dict[int, TrialView] = Field(description="the best finished trial at each width")


# --- transfers and runs -----------------------------------------------------------------


class TransferView(View):
    id: int
    sweep_id: int
    to_width: int
    result: dict[str, Any] = Field(description="per-width optima, drift, per-group LR/WD")


class RunView(View):
    id: int
    sweep_id: int | None
    transfer_id: int | None
    name: str
    status: db.JobStatus
    stale: bool = Field(description="queued or running, but its driver is gone (see sweeps)")
    config: dict[str, Any]
    checkpoint_path: str | None
    restarts: int = Field(description="times the run resumed from a checkpoint")
    resumed_from_step: int | None = Field(description="the step of the latest resume")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    driver_heartbeat_at: datetime | None = Field(description="its driver's last heartbeat")
    auto_resumes: int = Field(description="times the watchdog resumed it since its last start")
    error: str | None
    data: DataIdentity | None = Field(
        description="what it trains on; null for a run stored before it was kept"
    )

    @classmethod
    def of(cls, run: db.Run, settings: Settings) -> RunView:
        skip = {"stale", "data"}
        fields = {name: getattr(run, name) for name in cls.model_fields if name not in skip}
        return cls(**fields, stale=is_stale("run", run, settings), data=stored_identity(run.data))


class RunMetrics(View):
    """A run's loss curve as columns (null: not measured, or not finite)."""

    run_id: int
    status: db.JobStatus
    step: list[int]
    tokens: list[int]
    train_loss: list[float | None]
    eval_loss: list[float | None]
    tokens_per_s: list[float | None]
    startup_s: list[float | None]
    time_s: list[float]

    @classmethod
    def of(cls, run: db.Run, curve: list[db.MetricPoint]) -> RunMetrics:
        return cls(
            run_id=run.id,
            status=run.status,
            step=[p.step for p in curve],
            tokens=[p.tokens for p in curve],
            train_loss=[p.train_loss for p in curve],
            eval_loss=[p.eval_loss for p in curve],
            tokens_per_s=[p.tokens_per_s for p in curve],
            startup_s=[p.startup_s for p in curve],
            time_s=[p.time_s for p in curve],
        )


# --- a sweep's curves (GET /sweeps/{id}/curves, the dashboard's plots) --------------------


class LrPoint(View):
    trial_id: int
    lr: float
    wd: float
    tau: float | None = None
    final_eval_loss: float | None
    status: db.TrialStatus


class WidthCurve(View):
    """Final eval loss against LR at one width."""

    width: int
    line: list[LrPoint] = Field(
        description="the LR curve: finished trials with a finite loss at the best trial's "
        "other values (wd, tau), by LR"
    )
    points: list[LrPoint] = Field(description="every trial at this width with its values")
    best: LrPoint | None = Field(description="the trial with the lowest final eval loss")


class TrialCurve(View):
    """One trial's training curve, as columns (null: not measured, or not finite)."""

    trial_id: int
    key: str
    width: int
    params: dict[str, Any]
    status: db.TrialStatus
    step: list[int]
    tokens: list[int]
    train_loss: list[float | None]
    eval_loss: list[float | None]


class SweepCurves(View):
    sweep_id: int
    status: db.JobStatus
    planned: int
    finished: int
    widths: list[WidthCurve]
    trials: list[TrialCurve]
    transfer: dict[str, Any] | None = Field(
        None, description="the latest transfer's result: per-width optima and the drift"
    )
