"""Request and response bodies of the REST API (the request body of ``POST /sweeps`` is the
``SweepSpec`` itself). Each response model is built from the service's records by one
``of`` classmethod, so a route is a call to the service and a conversion."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

import db
from sweeper import service
from sweeper.launch import MAX_INT

T = TypeVar("T")


class FieldError(BaseModel):
    field: str | None = Field(description="dotted path of the field, e.g. search.lr.max")
    reason: str


class ErrorBody(BaseModel):
    """Every error response: what went wrong, and which field when a field did."""

    error: str = Field(description="not_found, conflict, invalid, unauthorized, forbidden, ...")
    reason: str
    field: str | None = None
    errors: list[FieldError] = Field(default_factory=list, description="every invalid field")


class Page(BaseModel, Generic[T]):
    """One page of a listing, newest first."""

    items: list[T]
    total: int = Field(description="rows in the whole listing")
    offset: int
    limit: int


class Health(BaseModel):
    status: Literal["ok"]
    database: str = Field(description="sqlite or postgresql")
    version: str


# --- sweeps -----------------------------------------------------------------------------


class SweepCreated(BaseModel):
    id: int
    name: str
    status: db.JobStatus


class SweepSummary(BaseModel):
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
    data: service.DataIdentity | None = Field(
        description="what its trials train on; null for a sweep stored before it was kept"
    )

    @classmethod
    def of(cls, progress: service.SweepProgress) -> SweepSummary:
        s = progress.sweep
        return cls(
            id=s.id,
            name=s.name,
            status=s.status,
            stale=progress.stale,
            planned=progress.planned,
            finished=progress.finished,
            widths=progress.spec.widths,
            created_at=s.created_at,
            started_at=s.started_at,
            finished_at=s.finished_at,
            driver_heartbeat_at=s.driver_heartbeat_at,
            auto_resumes=s.auto_resumes,
            error=s.error,
            data=progress.data,
        )


class TrialOut(BaseModel):
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
    def of(cls, trial: db.Trial) -> TrialOut:
        return cls.model_validate(trial, from_attributes=True)


class SweepDetail(SweepSummary):
    spec: dict[str, Any]
    best: dict[int, TrialOut] = Field(description="the best finished trial at each width")

    @classmethod
    def of(cls, progress: service.SweepProgress) -> SweepDetail:
        best = {w: TrialOut.of(t) for w, t in progress.best_per_width().items()}
        summary = SweepSummary.of(progress).model_dump()
        return cls(**summary, spec=progress.spec.model_dump(mode="json"), best=best)


class LrPoint(BaseModel):
    trial_id: int
    lr: float
    wd: float
    tau: float | None = None
    final_eval_loss: float | None
    status: db.TrialStatus


class WidthCurve(BaseModel):
    """Final eval loss against LR at one width."""

    width: int
    line: list[LrPoint] = Field(
        description="the LR curve: finished trials with a finite loss at the best trial's "
        "other values (wd, tau), by LR"
    )
    points: list[LrPoint] = Field(description="every trial at this width with its values")
    best: LrPoint | None = Field(description="the trial with the lowest final eval loss")


class TrialCurve(BaseModel):
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


class SweepCurves(BaseModel):
    sweep_id: int
    status: db.JobStatus
    planned: int
    finished: int
    widths: list[WidthCurve]
    trials: list[TrialCurve]
    transfer: dict[str, Any] | None = Field(
        None, description="the latest transfer's result: per-width optima and the drift"
    )


# --- transfers and runs (POST /runs takes sweeper.launch.LaunchRequest) ---------------


class TransferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to_width: int = Field(gt=0, le=MAX_INT, description="the width of the full-size model")


class TransferOut(BaseModel):
    id: int
    sweep_id: int
    to_width: int
    result: dict[str, Any]


class RunOut(BaseModel):
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
    data: service.DataIdentity | None = Field(
        description="what it trains on; null for a run stored before it was kept"
    )

    @classmethod
    def of(cls, run: db.Run) -> RunOut:
        fields = {name: getattr(run, name) for name in cls.model_fields if name != "stale"}
        return cls(**fields, stale=service.is_stale("run", run))


class RunMetrics(BaseModel):
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
    def of(cls, progress: service.RunProgress) -> RunMetrics:
        curve = progress.curve
        return cls(
            run_id=progress.run.id,
            status=progress.run.status,
            step=[p.step for p in curve],
            tokens=[p.tokens for p in curve],
            train_loss=[p.train_loss for p in curve],
            eval_loss=[p.eval_loss for p in curve],
            tokens_per_s=[p.tokens_per_s for p in curve],
            startup_s=[p.startup_s for p in curve],
            time_s=[p.time_s for p in curve],
        )


def sweep_curves(
    progress: service.SweepProgress,
    points: dict[int, list[db.MetricPoint]],
    transfer: db.Transfer | None,
) -> SweepCurves:
    """The LR curves of each width and every trial's training curve."""
    best = progress.best_per_width()
    widths = []
    for width in progress.spec.widths:
        at_width = [
            LrPoint(
                trial_id=t.id,
                lr=t.params["lr"],
                wd=t.params.get("wd", 0.0),
                tau=t.params.get("tau"),
                final_eval_loss=t.final_eval_loss,
                status=t.status,
            )
            for t in progress.trials
            if t.width == width and "lr" in t.params
        ]
        at_width.sort(key=lambda p: p.lr)
        best_id = best[width].id if width in best else None
        best_point = next((p for p in at_width if p.trial_id == best_id), None)
        line = [
            p
            for p in at_width
            if p.final_eval_loss is not None
            and p.status is db.TrialStatus.COMPLETED
            and (best_point is None or (p.wd, p.tau) == (best_point.wd, best_point.tau))
        ]
        widths.append(WidthCurve(width=width, line=line, points=at_width, best=best_point))
    trials = []
    for t in progress.trials:
        curve = points.get(t.id, [])
        trials.append(
            TrialCurve(
                trial_id=t.id,
                key=t.key,
                width=t.width,
                params=t.params,
                status=t.status,
                step=[p.step for p in curve],
                tokens=[p.tokens for p in curve],
                train_loss=[p.train_loss for p in curve],
                eval_loss=[p.eval_loss for p in curve],
            )
        )
    return SweepCurves(
        sweep_id=progress.sweep.id,
        status=progress.sweep.status,
        planned=progress.planned,
        finished=progress.finished,
        widths=widths,
        trials=trials,
        transfer=transfer.result if transfer is not None else None,
    )


# --- comparisons (GET /compare) ---------------------------------------------------------


class OptimumOut(BaseModel):
    value: float = Field(description="the optimal base LR")
    log2_uncertainty: float = Field(description="one standard error of log2(value)")
    loss: float = Field(description="the loss at the optimum (fitted, for a parabola)")
    method: Literal["parabola", "argmin"]
    at_edge: Literal["lower", "upper"] | None = Field(
        description="the best LR lies at this end of the searched range"
    )


class LrCurveOut(BaseModel):
    """Final eval loss against base LR at one width, at its best WD and τ, as columns."""

    width: int
    wd: float
    tau: float | None
    lr: list[float]
    loss: list[float]
    optimum: OptimumOut
    best_lr: float = Field(description="the LR of the lowest measured loss")
    best_loss: float


class DriftOut(BaseModel):
    slope: float = Field(description="log2 of the optimal base LR per doubling of width")
    uncertainty: float = Field(description="one standard error of the slope")


class LinePointOut(BaseModel):
    width: int
    lr: float


class TransferMarkOut(BaseModel):
    transfer_id: int
    to_width: int
    base_lr: float = Field(description="the transferred base LR")
    extrapolated_lr: float | None = Field(description="the drift line at the target width")


class SweepComparisonOut(BaseModel):
    sweep_id: int
    name: str
    status: db.JobStatus
    parametrization: str
    precision: str
    widths: list[int] = Field(description="swept; one for an LR sweep at one (target) width")
    curves: list[LrCurveOut] = Field(description="by width; widths without a result left out")
    drift: DriftOut | None = Field(description="None below two widths with a result")
    drift_line: list[LinePointOut] = Field(
        description="the drift line over the proxies' widths and every transfer's target"
    )
    transfers: list[TransferMarkOut] = Field(description="the latest to each target width")


class Comparison(BaseModel):
    """Sweeps side by side, in the order asked."""

    sweeps: list[SweepComparisonOut]

    @classmethod
    def of(cls, comparisons: list[service.SweepComparison]) -> Comparison:
        return cls(
            sweeps=[SweepComparisonOut.model_validate(c, from_attributes=True) for c in comparisons]
        )
