"""SweepSpec: loading, the plan, and errors that name the field."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from pydantic import ValidationError

from sweeper.spec import SweepSpec
from tests.conftest import REPO

BASE = {
    "name": "t",
    "train": {"model": {"head_dim": 16, "depth": 2, "seq_len": 32}, "steps": 10},
    "widths": [64, 32],
    "search": {"lr": {"min": 2**-8, "max": 2**-2, "points": 4}, "wd": [0.0, 0.1]},
}


def spec(**overrides):
    return SweepSpec.model_validate(BASE | overrides)


def test_grid_plan_is_every_width_lr_wd():
    s = spec()
    assert s.widths == [32, 64]
    plan = s.plan()
    assert len(plan) == 2 * 4 * 2
    assert len({p.key for p in plan}) == len(plan)
    lrs = sorted({p.params["lr"] for p in plan})
    assert [math.log2(lr) for lr in lrs] == pytest.approx([-8, -6, -4, -2])
    trial = s.trial_config(plan[-1].width, plan[-1].params)
    assert (trial.model.width, trial.lr, trial.wd) == (64, 2**-2, 0.1)
    assert trial.steps == 10 and trial.model.depth == 2


def test_a_grid_at_two_horizons_plans_every_point_at_each():
    s = spec(search=BASE["search"] | {"steps": [40, 10]})
    assert s.search.steps == [10, 40]
    plan = s.plan()
    assert len(plan) == 2 * 2 * 4 * 2 and len({p.key for p in plan}) == len(plan)
    first = plan[0]
    assert first.key == f"w32-s10-lr{2**-8:.6g}-wd0" and first.params["steps"] == 10
    trial = s.trial_config(plan[-1].width, plan[-1].params)
    assert (trial.model.width, trial.steps, trial.lr, trial.wd) == (64, 40, 2**-2, 0.1)


def test_a_grid_at_two_depths_plans_every_point_at_each_and_checks_each_depth():
    s = spec(search=BASE["search"] | {"depth": [4, 2]})
    assert s.search.depth == [2, 4]
    plan = s.plan()
    assert len(plan) == 2 * 2 * 4 * 2 and len({p.key for p in plan}) == len(plan)
    assert plan[0].key == f"w32-d2-lr{2**-8:.6g}-wd0" and plan[0].params["depth"] == 2
    trial = s.trial_config(plan[-1].width, plan[-1].params)
    assert (trial.model.width, trial.model.depth, trial.lr) == (64, 4, 2**-2)
    # CompleteP from base depth 4 multiplies tau 0.4 by (4/2)^2 at depth 2: past 1
    model = BASE["train"]["model"] | {"depth": 4, "depth_rule": "completep", "base_depth": 4}
    with pytest.raises(ValidationError) as info:
        spec(train=BASE["train"] | {"model": model}, search=BASE["search"] | {"depth": [2, 4]})
    assert info.value.errors()[0]["loc"] == ("search",)
    assert "depth 2: tau 0.4 at depth 2 under completep" in str(info.value)


def test_tpe_plan_and_tau():
    s = spec(algorithm="tpe", trials_per_width=3, search=BASE["search"] | {"tau": [0.2, 0.4]})
    assert [p.key for p in s.plan()] == [f"w{w}-t{n:03d}" for w in (32, 64) for n in range(3)]
    grid = spec(search=BASE["search"] | {"tau": [0.2, 0.4]})
    assert len(grid.plan()) == 2 * 4 * 2 * 2
    assert grid.trial_config(32, {"lr": 0.1, "wd": 0.0, "tau": 0.2}).model.tau == 0.2


@pytest.mark.parametrize(
    ("overrides", "loc"),
    [
        ({"widths": []}, ("widths",)),
        ({"widths": [64, 100]}, ("widths",)),
        ({"widths": [64, 64]}, ("widths",)),
        ({"search": {"lr": {"min": 0.1, "max": 0.01}}}, ("search", "lr")),
        ({"search": {"lr": {"min": -1, "max": 0.01}}}, ("search", "lr", "min")),
        ({"search": {"lr": {"min": 0.01, "max": 0.1}, "wd": [-0.1]}}, ("search", "wd")),
        ({"resources": {"gpu": 1.5}}, ("resources", "gpu")),
        ({"resources": {"cpu": 0}}, ("resources", "cpu")),
        ({"max_concurrency": 0}, ("max_concurrency",)),
        ({"train": {"model": {"head_dim": 16}, "lr": -1}}, ("train", "lr")),
        ({"unknown": 1}, ("unknown",)),
        ({"search": BASE["search"] | {"steps": [10]}}, ("search", "steps")),
        ({"search": BASE["search"] | {"steps": [10, 10]}}, ("search", "steps")),
        ({"search": BASE["search"] | {"steps": [0, 10]}}, ("search", "steps")),
        ({"search": BASE["search"] | {"steps": [10, 40]}, "algorithm": "tpe"}, ("algorithm",)),
        ({"search": BASE["search"] | {"steps": [10, 40]}, "asha": True}, ("asha",)),
        ({"search": BASE["search"] | {"depth": [2]}}, ("search", "depth")),
        ({"search": BASE["search"] | {"depth": [0, 2]}}, ("search", "depth")),
        ({"search": BASE["search"] | {"depth": [2, 4]}, "algorithm": "tpe"}, ("algorithm",)),
        ({"search": BASE["search"] | {"depth": [2, 4]}, "asha": True}, ("asha",)),
    ],
)
def test_errors_name_the_field(overrides, loc):
    with pytest.raises(ValidationError) as info:
        spec(**overrides)
    assert info.value.errors()[0]["loc"] == loc


def test_one_width_is_a_sweep():
    """An LR sweep at one width (a check at a target) is valid; its transfer is refused."""
    s = spec(widths=[64])
    assert s.widths == [64] and len(s.plan()) == 4 * 2


def test_load_yaml_and_json(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps(BASE))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(BASE))
    assert SweepSpec.load(tmp_path / "s.json") == spec() == SweepSpec.load(tmp_path / "s.yaml")


def test_example_spec_loads():
    example = SweepSpec.load(REPO / "examples" / "debug_sweep.yaml")
    assert len(example.plan()) == len(example.widths) * example.search.lr.points
    horizons = SweepSpec.stored(yaml.safe_load((REPO / "examples/horizon_sweep.yaml").read_text()))
    assert horizons.search.steps is not None and len(horizons.search.steps) == 2
    assert len(horizons.plan()) == 3 * 7 * 2
    depths = SweepSpec.stored(yaml.safe_load((REPO / "examples/depth_sweep.yaml").read_text()))
    assert depths.search.depth == [2, 4] and len(depths.plan()) == 3 * 7 * 2
    check = SweepSpec.stored(yaml.safe_load((REPO / "examples/depth_check.yaml").read_text()))
    assert check.train.model.depth == 12 and check.train.model.depth_rule == "completep"
    for rule in ("sqrt", "none"):  # the other rules of the measurement, as its note says
        model = depths.train.model.model_dump() | {"depth_rule": rule}
        spec_dict = depths.model_dump(mode="json")
        SweepSpec.stored(spec_dict | {"train": spec_dict["train"] | {"model": model}})


def test_a_stored_spec_outlives_its_data_file(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text("x")
    stored = spec(train=BASE["train"] | {"data": str(data)}).model_dump(mode="json")
    data.unlink()
    with pytest.raises(ValidationError, match="no such file"):
        SweepSpec.model_validate(stored)
    assert SweepSpec.stored(stored).train.data == str(data)


def test_a_plan_too_large_to_enumerate_is_refused():
    """Every read of a sweep's progress enumerates its plan: a billion log-spaced points
    would stall the service, so the spec says no at once."""
    with pytest.raises(ValidationError, match="the plan has 2000000000 trials, more than 10000"):
        spec(search={"lr": {"min": 0.01, "max": 0.1, "points": 10**9}})
    with pytest.raises(ValidationError, match="the plan has 20000 trials"):
        spec(algorithm="tpe", trials_per_width=10_000)
    assert len(spec(search={"lr": {"min": 0.01, "max": 0.1, "points": 5000}}).plan()) == 10_000


def test_config_derivations_match_the_model():
    """`ModelConfig` says which (group, fan-in) pairs and how many parameters its GPT has;
    `with_overrides` changes fields of either config by name."""
    from models import ModelConfig, TrainConfig
    from models.gpt import GPT

    model = ModelConfig(depth=2, width=64, head_dim=16, mlp_ratio=3, vocab_size=100)
    gpt = GPT(model)
    assert set(model.parameter_groups()) == {(g, f) for g, f, _ in gpt.parameter_groups()}
    assert model.parameter_count == sum(p.numel() for p in gpt.parameters())
    config = TrainConfig(model=model).with_overrides({"width": 32, "lr": 0.5, "steps": 3})
    assert (config.model.width, config.model.depth, config.lr, config.steps) == (32, 2, 0.5, 3)
    with pytest.raises(ValueError, match="multiple of head_dim"):
        config.with_overrides({"width": 33})
