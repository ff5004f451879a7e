"""The REST API's own bodies: errors, health, the transfer request and the comparison view.
The read models of sweeps, trials, transfers and runs are `sweeper.views` (the CLI's
``--json`` prints the same), the request bodies of ``POST /sweeps`` and ``POST /runs`` are
``SweepSpec`` and ``LaunchRequest`` themselves."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sweeper import service
from sweeper.service import MAX_INT, MAX_TOKENS, JobStatus


class FieldError(BaseModel):
    field: str | None = Field(description="dotted path of the field, e.g. search.lr.max")
    reason: str


class ErrorBody(BaseModel):
    """Every error response: what went wrong, and which field when a field did."""

    error: str = Field(description="not_found, conflict, invalid, unauthorized, forbidden, ...")
    reason: str
    field: str | None = None
    errors: list[FieldError] = Field(default_factory=list, description="every invalid field")


class Health(BaseModel):
    status: Literal["ok"]
    database: str = Field(description="sqlite or postgresql")
    version: str


class SweepExample(BaseModel):
    """The new-sweep form's defaults: the example spec (every field), and the choices the
    form offers that the spec does not list."""

    spec: dict[str, Any] = Field(description="a SweepSpec: examples/debug_sweep.yaml")
    precisions: list[str]

    @classmethod
    def of(cls, spec: service.SweepSpec) -> SweepExample:
        return cls(spec=spec.model_dump(mode="json"), precisions=list(service.PRECISIONS))


# --- transfers ------------------------------------------------------------------------


class TransferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to_width: int = Field(gt=0, le=MAX_INT, description="the width of the full-size model")
    to_tokens: int | None = Field(
        None,
        gt=0,
        le=MAX_TOKENS,
        description="the full-size run's training tokens: with proxies swept at two or more"
        " horizons the transfer carries the optimum there",
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
    status: JobStatus
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
