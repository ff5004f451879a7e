"""The read models: what the service returns about sweeps, trials, transfers and runs, and
what both the REST API and the CLI's ``--json`` serialise, so that a field has one name and
one shape everywhere (pagination included). Each is built from the storage's records by
one ``of`` classmethod; `sweeper.service` is the only caller."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

import db
from models.data import DataIdentity
from sweeper.jobs import JobKind, driver_gone
from sweeper.settings import Settings
from sweeper.spec import SweepSpec
from sweeper.transfer import Drift, Optimum

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


# --- the lifecycle of a sweep or a run ----------------------------------------------------


class JobView(View):
    """What a sweep and a run share: a job with a driver, its lifecycle and its data."""

    id: int
    name: str
    status: db.JobStatus
    stale: bool = Field(
        description="queued or running, but its driver is gone (its process exited or its"
        " heartbeat stopped): the service's watchdog resumes it"
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    driver_heartbeat_at: datetime | None = Field(description="its driver's last heartbeat")
    auto_resumes: int = Field(description="times the watchdog resumed it since its last start")
    error: str | None
    data: DataIdentity | None = Field(
        description="what it trains on; null for a job stored before it was kept"
    )

    @classmethod
    def _fields_of(
        cls, kind: JobKind, job: db.Sweep | db.Run, settings: Settings, **computed: Any
    ) -> dict[str, Any]:
        """The view's fields: the ``computed`` ones, the two every job derives (``stale``,
        ``data``), and the rest as the stored row holds them."""
        derived = {
            "stale": is_stale(kind, job, settings),
            "data": stored_identity(job.data),
            **computed,
        }
        stored = {name: getattr(job, name) for name in cls.model_fields if name not in derived}
        return stored | derived


# --- sweeps -----------------------------------------------------------------------------


class SweepCreated(View):
    id: int
    name: str
    status: db.JobStatus


class SweepSummary(JobView):
    planned: int = Field(description="trials in the plan")
    finished: int = Field(description="trials with a result (completed, diverged, pruned)")
    widths: list[int]

    @classmethod
    def of(cls, sweep: db.Sweep, finished: int, settings: Settings) -> SweepSummary:
        spec = SweepSpec.stored(sweep.spec)
        return cls(
            **cls._fields_of(
                "sweep",
                sweep,
                settings,
                planned=len(spec.plan()),
                finished=finished,
                widths=spec.widths,
            )
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


class RunView(JobView):
    sweep_id: int | None
    transfer_id: int | None
    config: dict[str, Any]
    checkpoint_path: str | None
    restarts: int = Field(description="times the run resumed from a checkpoint")
    resumed_from_step: int | None = Field(description="the step of the latest resume")

    @classmethod
    def of(cls, run: db.Run, settings: Settings) -> RunView:
        return cls(**cls._fields_of("run", run, settings))


class LossColumns(View):
    """A training curve as columns (null: not measured, or not finite)."""

    step: list[int]
    tokens: list[int]
    train_loss: list[float | None]
    eval_loss: list[float | None]

    @classmethod
    def columns(cls, curve: list[db.MetricPoint]) -> dict[str, list[Any]]:
        """This view's columns that a metric point holds, from ``curve``."""
        names = {field.name for field in dataclasses.fields(db.MetricPoint)}
        return {
            name: [getattr(p, name) for p in curve] for name in cls.model_fields if name in names
        }


class RunMetrics(LossColumns):
    """A run's curve, with its speed and time columns."""

    run_id: int
    status: db.JobStatus
    tokens_per_s: list[float | None]
    startup_s: list[float | None]
    time_s: list[float]

    @classmethod
    def of(cls, run: db.Run, curve: list[db.MetricPoint]) -> RunMetrics:
        return cls(run_id=run.id, status=run.status, **cls.columns(curve))


# --- a sweep's curves (GET /sweeps/{id}/curves, the dashboard's plots) --------------------


class LrPoint(View):
    trial_id: int
    lr: float
    wd: float
    tau: float | None = None
    steps: int | None = Field(None, description="its train steps, where horizons are swept")
    depth: int | None = Field(None, description="its depth, where depths are swept")
    final_eval_loss: float | None
    status: db.TrialStatus


class WidthCurve(View):
    """Final eval loss against LR at one width."""

    width: int
    line: list[LrPoint] = Field(
        description="the LR curve: finished trials with a finite loss at the best trial's "
        "other values (wd, tau, steps), by LR"
    )
    points: list[LrPoint] = Field(description="every trial at this width with its values")
    best: LrPoint | None = Field(description="the trial with the lowest final eval loss")


class TrialCurve(LossColumns):
    """One trial's training curve."""

    trial_id: int
    key: str
    width: int
    params: dict[str, Any]
    status: db.TrialStatus

    @classmethod
    def of(cls, trial: db.Trial, curve: list[db.MetricPoint]) -> TrialCurve:
        return cls(
            trial_id=trial.id,
            key=trial.key,
            width=trial.width,
            params=trial.params,
            status=trial.status,
            **cls.columns(curve),
        )


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


# --- sweeps side by side (GET /compare, the comparison view; built by sweeper.compare) ----


class LrCurve(View):
    """Final eval loss against base LR at one width, at its best WD and τ, as columns, and
    where its minimum lies."""

    width: int
    wd: float
    tau: float | None
    lr: list[float] = Field(description="increasing")
    loss: list[float]
    optimum: Optimum = Field(description="fitted: a parabola in log2 LR, or the argmin")
    best_lr: float = Field(description="the LR of the lowest measured loss")
    best_loss: float


class LinePoint(View):
    width: int
    lr: float


class TransferMark(View):
    """A stored transfer: the base LR carried to ``to_width`` and the drift line there."""

    transfer_id: int
    to_width: int
    base_lr: float = Field(description="the transferred base LR")
    extrapolated_lr: float | None = Field(description="the drift line at the target width")


class SweepComparison(View):
    sweep_id: int
    name: str
    status: db.JobStatus
    parametrization: str
    precision: str
    widths: list[int] = Field(description="swept; one for an LR sweep at one (target) width")
    curves: list[LrCurve] = Field(description="by width; widths without a result left out")
    drift: Drift | None = Field(description="None below two widths with a result")
    drift_line: list[LinePoint] = Field(
        description="the drift line over the proxies' widths and every transfer's target"
    )
    transfers: list[TransferMark] = Field(description="the latest to each target width")


class Comparison(View):
    """Sweeps side by side, in the order asked."""

    sweeps: list[SweepComparison]
