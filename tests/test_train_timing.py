"""The trainer reports startup apart from steady-state throughput."""

from __future__ import annotations

import math

from models import TrainConfig, preset
from models.train import train


def tiny(steps: int) -> TrainConfig:
    return TrainConfig(
        model=preset("debug"),
        data="stdlib",
        steps=steps,
        batch_size=4,
        eval_interval=3,
        eval_batches=1,
        device="cpu",
    )


def test_startup_is_reported_with_every_point_and_left_out_of_tokens_per_s() -> None:
    result = train(tiny(6))
    assert result.status == "completed" and [p.step for p in result.curve] == [3, 6]
    assert 0 < result.startup_s < result.curve[0].time_s
    assert {p.startup_s for p in result.curve} == {result.startup_s}
    # steady state: the 5 steps after the first, over their own training time only
    assert math.isfinite(result.tokens_per_s) and result.tokens_per_s > 0
    assert result.summary()["startup_s"] == result.startup_s


def test_a_run_of_only_warm_up_has_no_steady_throughput() -> None:
    result = train(tiny(1))
    assert result.status == "completed" and math.isfinite(result.startup_s)
    assert math.isnan(result.tokens_per_s)
    assert result.summary()["tokens_per_s"] is None  # JSON: not measured
