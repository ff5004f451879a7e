"""What a full-size run asks for (`LaunchRequest`) and the TrainConfig it makes
(`launch_config`): the sweep's base run at the target's shape with the transferred values.

Ray-free, so that the service, the CLI and the API can check a request without loading Ray;
`sweeper.launch` runs it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from db import MAX_ID, MAX_INT
from models import TrainConfig
from models.config import Precision
from sweeper.spec import SweepSpec
from sweeper.transfer import TransferResult

Strategy = Literal["auto", "ddp", "fsdp"]


class LaunchRequest(BaseModel):
    """What `sweeper launch` and `POST /runs` ask for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sweep_id: int | None = Field(
        None, ge=1, le=MAX_ID, description="default: the latest completed sweep"
    )
    to_width: int = Field(ge=1, le=MAX_INT, description="the target model's width")
    steps: int = Field(ge=1, le=MAX_INT)
    depth: int | None = Field(None, ge=1, le=MAX_INT, description="default: the sweep's depth")
    workers: int = Field(1, ge=1, le=4096)
    gpus_per_worker: float = Field(0.0, ge=0.0, le=8.0)
    precision: Precision = "fp8"
    checkpoint_every: int | None = Field(None, ge=1, le=MAX_INT, description="default: every eval")
    strategy: Strategy = "auto"
    name: str | None = Field(None, max_length=200)
    data: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="the target's data (a prepared directory, a text file or 'stdlib');"
        " default: the sweep's",
    )


def launch_config(spec: SweepSpec, result: TransferResult, request: LaunchRequest) -> TrainConfig:
    """The target run: the sweep's base run at the target shape with the transferred values,
    on the request's data when it names other data (its vocabulary then comes from it)."""
    overrides: dict[str, Any] = {
        "width": request.to_width,
        "lr": result.base_lr,
        "wd": result.base_wd,
        "steps": request.steps,
        "precision": request.precision,
        "device": "cuda" if request.gpus_per_worker > 0 else "cpu",
    }
    if request.depth is not None:
        overrides["depth"] = request.depth
    if result.base_tau is not None:
        overrides["tau"] = result.base_tau
    if request.data:
        overrides["data"] = request.data
    config = spec.train.with_overrides(overrides)
    if config.batch_size % request.workers:
        raise ValueError(
            f"workers: batch_size {config.batch_size} does not split over {request.workers}"
        )
    return config
