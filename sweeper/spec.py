"""SweepSpec: what a user asks for: a base run, proxy widths, a search space, resources.

Loadable from YAML or JSON; validation errors name the field (``widths``, ``search.lr``,
``resources.gpu``, ...), the same message from the CLI and the REST API.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from models import ModelConfig, TrainConfig

SearchAlgorithm = Literal["grid", "tpe"]
# Trials a sweep may plan: its plan is enumerated whenever its progress is read.
MAX_TRIALS = 10_000


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LogRange(_Strict):
    """A positive range searched on a log scale; a grid takes ``points`` log-spaced values."""

    min: float = Field(gt=0.0)
    max: float = Field(gt=0.0)
    points: int = Field(7, ge=1, description="grid: log-spaced values, both ends included")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min >= self.max:
            raise ValueError(f"min ({self.min:g}) must be below max ({self.max:g})")
        return self

    def grid(self) -> list[float]:
        if self.points == 1:
            return [math.sqrt(self.min * self.max)]
        lo, hi = math.log2(self.min), math.log2(self.max)
        return [2 ** (lo + (hi - lo) * i / (self.points - 1)) for i in range(self.points)]


class SearchSpace(_Strict):
    lr: LogRange = Field(description="base learning rate (log scale)")
    wd: list[float] = Field([0.0], min_length=1, description="base weight decay values")
    tau: list[float] | None = Field(None, min_length=1, description="µS residual mix values")
    steps: list[int] | None = Field(
        None,
        min_length=2,
        description="token horizons: train steps of each proxy, two or more (grid only); the"
        " transfer fits how the optimum moves with tokens and carries it to the target's",
    )
    depth: list[int] | None = Field(
        None,
        min_length=2,
        description="proxy depths (blocks), two or more (grid only): the transfer measures"
        " how the optimum moves with depth under the model's depth_rule",
    )

    @field_validator("wd")
    @classmethod
    def _wd_non_negative(cls, values: list[float]) -> list[float]:
        if any(v < 0 for v in values):
            raise ValueError("weight decay values must be >= 0")
        return values

    @field_validator("steps", "depth")
    @classmethod
    def _distinct_positive(cls, values: list[int] | None, info: ValidationInfo) -> list[int] | None:
        if values is None:
            return None
        if any(v < 1 for v in values) or len(set(values)) != len(values):
            raise ValueError(f"{info.field_name} values must be distinct and >= 1")
        return sorted(values)

    @field_validator("tau")
    @classmethod
    def _tau_in_unit_interval(cls, values: list[float] | None) -> list[float] | None:
        if values is not None and any(not 0 < v < 1 for v in values):
            raise ValueError("tau values must lie strictly between 0 and 1")
        return values


class Resources(_Strict):
    """Per trial: fractions of a GPU let several small proxies share one."""

    cpu: float = Field(1.0, gt=0.0, le=1024)
    gpu: float = Field(0.0, ge=0.0, le=64)

    @field_validator("gpu")
    @classmethod
    def _fraction_or_whole(cls, gpu: float) -> float:
        if gpu > 1 and gpu != int(gpu):
            raise ValueError("a trial takes a fraction of one GPU or a whole number of GPUs")
        return gpu


# The values a trial's params may hold: a grid trial's point, or what TPE suggests.
TRIAL_VALUES = ("lr", "wd", "tau", "steps", "depth")


@dataclass(frozen=True)
class TrialPlan:
    """One planned trial: its stable key (what makes resume idempotent) and its values."""

    key: str
    width: int
    params: dict[str, float]  # lr, wd and, when swept, tau, steps, depth; empty for TPE


class SweepSpec(_Strict):
    name: str = Field(min_length=1, max_length=200)
    train: TrainConfig = Field(description="the base run; width, lr, wd (and tau) are swept")
    # One width is a valid sweep (an LR sweep at a target width checks a transfer); the
    # transfer is what needs two or more (sweeper.transfer refuses fewer).
    widths: list[int] = Field(min_length=1, description="proxy widths (a transfer needs 2+)")
    search: SearchSpace
    algorithm: SearchAlgorithm = "grid"
    trials_per_width: int = Field(8, ge=1, le=10_000, description="tpe: trials at each width")
    asha: bool = Field(False, description="stop unpromising trials early (ASHA)")
    asha_grace_period: int = Field(2, ge=1, description="ASHA: reports before a trial can stop")
    resources: Resources = Field(default_factory=Resources)
    max_concurrency: int | None = Field(None, ge=1, description="trials at once (None: no cap)")
    seed: int = Field(0, ge=0, description="seeds the search algorithm")

    @field_validator("widths")
    @classmethod
    def _distinct_sorted_multiples_of_head_dim(
        cls, widths: list[int], info: ValidationInfo
    ) -> list[int]:
        if any(w < 1 for w in widths):
            raise ValueError("widths must be positive")
        if len(set(widths)) != len(widths):
            raise ValueError("widths must be distinct")
        train = info.data.get("train")  # absent when train itself failed validation
        if train is not None:
            bad = [w for w in widths if w % train.model.head_dim]
            if bad:
                raise ValueError(
                    f"{bad} not a multiple of train.model.head_dim ({train.model.head_dim})"
                )
        return sorted(widths)

    @model_validator(mode="after")
    def _plan_is_bounded(self) -> Self:
        if self.algorithm == "tpe":
            per_width = self.trials_per_width
        else:
            per_width = (
                self.search.lr.points
                * len(self.search.wd)
                * len(self.search.tau or [0])
                * len(self.search.steps or [0])
                * len(self.search.depth or [0])
            )
        if per_width * len(self.widths) > MAX_TRIALS:
            raise ValueError(
                f"the plan has {per_width * len(self.widths)} trials, more than {MAX_TRIALS}"
            )
        return self

    @field_validator("search")
    @classmethod
    def _tau_only_for_mus(cls, search: SearchSpace, info: ValidationInfo) -> SearchSpace:
        train = info.data.get("train")
        if search.tau is not None and train is not None and train.model.parametrization != "mus":
            raise ValueError("tau is swept only in the mus parametrization")
        return search

    @field_validator("search")
    @classmethod
    def _every_depth_builds(cls, search: SearchSpace, info: ValidationInfo) -> SearchSpace:
        """A swept depth must make a valid model (a depth rule raises tau at shallow depth)."""
        train = info.data.get("train")  # absent when train itself failed validation
        for depth in search.depth or []:
            if train is None:
                break
            try:
                ModelConfig.model_validate(train.model.model_dump() | {"depth": depth})
            except ValidationError as e:
                reason = e.errors()[0]["msg"].removeprefix("Value error, ")
                raise ValueError(f"depth {depth}: {reason}") from None
        return search

    # Token horizons (search.steps) and depths (search.depth) need a grid without ASHA: TPE
    # would model trials of different horizons or depths as one objective, and ASHA would
    # stop a long (or shallow) trial by the loss a short (or deep) one reaches at that step.
    @field_validator("algorithm", "asha")
    @classmethod
    def _axes_on_a_plain_grid(cls, value: Any, info: ValidationInfo) -> Any:
        search = info.data.get("search")
        chosen = value != "grid" if info.field_name == "algorithm" else value
        if chosen and search is not None:
            for axis, what in (("steps", "token horizons"), ("depth", "depths")):
                if getattr(search, axis) is not None:
                    raise ValueError(f"search.{axis} ({what}) needs algorithm 'grid' without asha")
        return value

    @classmethod
    def stored(cls, data: Any) -> SweepSpec:
        """A spec read back from the database: its data file need not exist any more."""
        return cls.model_validate(data, context={"check_files": False})

    @classmethod
    def load(cls, path: str | Path) -> SweepSpec:
        """Read a spec from a ``.yaml``/``.yml`` or ``.json`` file."""
        text = Path(path).read_text()
        data: Any = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        return cls.model_validate(data)

    def trial_config(self, width: int, params: dict[str, float]) -> TrainConfig:
        """The TrainConfig of one trial: the base run at ``width`` with the trial's values."""
        return self.train.with_overrides({"width": width} | params)

    def plan(self) -> list[TrialPlan]:
        """Every trial of the sweep, in a stable order: widths, then grid points or TPE slots."""
        return list(self._plan())

    def _plan(self) -> Iterator[TrialPlan]:
        for width in self.widths:
            if self.algorithm == "tpe":
                for n in range(self.trials_per_width):
                    yield TrialPlan(key=f"w{width}-t{n:03d}", width=width, params={})
                continue
            taus: list[float | None] = list(self.search.tau) if self.search.tau else [None]
            horizons: list[int | None] = list(self.search.steps) if self.search.steps else [None]
            depths: list[int | None] = list(self.search.depth) if self.search.depth else [None]
            grid = itertools.product(depths, horizons, self.search.lr.grid(), self.search.wd, taus)
            for depth, steps, lr, wd, tau in grid:
                params: dict[str, float] = {"lr": lr, "wd": wd}
                parts = [f"w{width}"] + ([] if depth is None else [f"d{depth}"])
                parts += [] if steps is None else [f"s{steps}"]
                parts += [f"lr{lr:.6g}", f"wd{wd:g}"]
                if tau is not None:
                    params["tau"] = tau
                    parts.append(f"tau{tau:g}")
                if steps is not None:
                    params["steps"] = steps
                if depth is not None:
                    params["depth"] = depth
                yield TrialPlan(key="-".join(parts), width=width, params=params)
