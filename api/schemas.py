"""The REST API's own bodies: errors, health and the transfer request. The read models of
sweeps, trials, transfers, runs and comparisons are `sweeper.views` (the CLI's ``--json``
prints the same), the request bodies of ``POST /sweeps`` and ``POST /runs`` are
``SweepSpec`` and ``LaunchRequest`` themselves."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sweeper import service
from sweeper.service import MAX_INT, MAX_TOKENS


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
    to_depth: int | None = Field(
        None,
        gt=0,
        le=MAX_INT,
        description="the full-size model's blocks, when not the proxies' (the model's depth"
        " rule scales tau and the hidden LR)",
    )
