"""Transfer maths on synthetic loss curves with a known optimum."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from models import ModelConfig
from models.data import DataIdentity
from models.width_rules import group_rule
from sweeper.transfer import (
    Drift,
    TrialOutcome,
    compute_transfer,
    data_warnings,
    drift_line,
    drift_warning,
    fit_log_optimum,
)

MODEL = ModelConfig(head_dim=16)
LOG2_LRS = np.arange(-12.0, -1.0, 1.0)


def curve(width, log2_opt, *, noise=0.003, wd=0.0, seed=0, log2_lrs=LOG2_LRS, floor=2.0):
    rng = np.random.default_rng(seed + width)
    return [
        TrialOutcome(
            width, 2**x, wd, float(floor + 0.04 * (x - log2_opt) ** 2 + rng.normal(0, noise))
        )
        for x in log2_lrs
    ]


@pytest.mark.parametrize("log2_opt", [-8.0, -6.3, -4.5])
def test_optimum_within_tolerance(log2_opt):
    fit = fit_log_optimum([(o.lr, o.loss) for o in curve(128, log2_opt)])
    assert fit.method == "parabola"
    assert math.log2(fit.value) == pytest.approx(log2_opt, abs=0.2)
    assert 0 < fit.log2_uncertainty < 1
    assert fit.loss == pytest.approx(2.0, abs=0.02)


@pytest.mark.parametrize("true_slope", [0.0, -0.5, -1.0])
def test_drift_recovered(true_slope):
    widths = [64, 128, 256, 512]
    outcomes = [o for i, w in enumerate(widths) for o in curve(w, -5.0 + true_slope * i, seed=i)]
    result = compute_transfer(outcomes, model=MODEL, to_width=2048)
    assert result.drift is not None
    assert result.drift.slope == pytest.approx(true_slope, abs=0.15)
    unreliable = any("not reliable" in w for w in result.warnings)
    assert unreliable == (abs(true_slope) > 0.25)
    if true_slope == 0.0:
        assert math.log2(result.base_lr) == pytest.approx(-5.0, abs=0.2)
    else:  # the drift line at the target continues the trend
        assert math.log2(result.extrapolated_lr) == pytest.approx(-5.0 + true_slope * 5, abs=0.6)


def test_a_drift_within_the_noise_asks_for_a_finer_sweep_instead():
    assert drift_warning(Drift(slope=0.05, uncertainty=0.1)) is None
    assert "not reliable" in (drift_warning(Drift(slope=-1.0, uncertainty=0.1)) or "")
    for noisy in (Drift(slope=-0.67, uncertainty=0.71), Drift(slope=0.0, uncertainty=0.4)):
        warning = drift_warning(noisy) or ""
        assert "uncertain" in warning and "more LR points" in warning
        assert "not reliable" not in warning


def test_edge_warnings():
    outcomes = curve(64, -1.5) + curve(128, -12.5)
    result = compute_transfer(outcomes, model=MODEL, to_width=256)
    text = " ".join(result.warnings)
    assert "width 64" in text and "upper edge" in text and "upward" in text
    assert "width 128" in text and "lower edge" in text and "downward" in text
    assert all(w.lr.method == "argmin" for w in result.widths)


def test_nan_and_diverged_points_are_ignored():
    clean = curve(64, -6.0) + curve(128, -6.0)
    noisy = [
        *clean,
        TrialOutcome(64, 2**-3.5, 0.0, math.nan),
        TrialOutcome(128, 2**-2.5, 0.0, None),
        TrialOutcome(128, 2**-1.5, 0.0, math.inf),
    ]
    assert compute_transfer(noisy, model=MODEL, to_width=512).base_lr == pytest.approx(
        compute_transfer(clean, model=MODEL, to_width=512).base_lr
    )


def test_too_few_points_warns():
    outcomes = curve(64, -6.0) + curve(128, -6.0, log2_lrs=np.array([-7.0, -5.0]))
    result = compute_transfer(outcomes, model=MODEL, to_width=512)
    assert any("width 128: only 2 finite points" in w for w in result.warnings)
    with pytest.raises(ValueError, match="nothing to transfer"):
        compute_transfer([TrialOutcome(64, 0.01, 0.0, None)], model=MODEL, to_width=512)


def test_one_width_is_refused_and_the_drift_line_gives_the_extrapolation():
    with pytest.raises(ValueError, match=r"every finished trial is at width 64.*two or more"):
        compute_transfer(curve(64, -6.0), model=MODEL, to_width=512)
    result = compute_transfer(curve(64, -6.0) + curve(128, -7.0), model=MODEL, to_width=512)
    assert result.drift is not None
    assert drift_line(result.widths, result.drift, 512) == result.extrapolated_lr
    assert drift_line(result.widths, result.drift, 128) == result.widths[-1].lr.value
    assert math.log2(result.extrapolated_lr) == pytest.approx(-9.0, abs=0.3)


def test_best_wd_and_group_values_follow_the_width_rules():
    outcomes = curve(64, -6.0, wd=0.0) + curve(64, -6.0, wd=0.1, floor=1.9)
    outcomes += curve(128, -6.0, wd=0.0) + curve(128, -6.0, wd=0.1, floor=1.9)
    result = compute_transfer(outcomes, model=MODEL, to_width=1024)
    assert result.base_wd == 0.1
    for g in result.groups:
        rule = group_rule(
            g.group,
            parametrization="mus",
            fan_in=g.fan_in,
            base_lr=result.base_lr,
            base_wd=0.1,
            base_width=MODEL.base_width,
        )
        assert (g.lr, g.wd) == (pytest.approx(rule.lr), rule.wd)
    hidden = {g.fan_in: g.lr for g in result.groups if g.group == "hidden"}
    assert hidden[4096] == pytest.approx(hidden[1024] / 2)  # sqrt(d0/fan_in)


def _data(**overrides: object) -> DataIdentity:
    fields: dict[str, object] = {
        "source": "/data/web-bpe",
        "sha256": "a" * 64,
        "tokenizer": "bpe",
        "tokenizer_sha256": "b" * 64,
        "vocab_size": 8192,
        "train_tokens": 10**9,
        "val_tokens": 10**8,
    }
    return DataIdentity.model_validate(fields | overrides)


def test_data_warnings_name_what_differs_between_proxies_and_target():
    assert data_warnings(_data(), _data()) == []
    [tokenizer] = data_warnings(_data(), _data(tokenizer_sha256="c" * 64))
    assert "tokenizer bpe bbbbbbbbbbbb (vocabulary 8192)" in tokenizer
    # Same tokenizer, other content under the same path: the data, not the path, is compared.
    [content] = data_warnings(_data(), _data(sha256="d" * 64))
    assert "sha256 aaaaaaaaaaaa" in content and "sha256 dddddddddddd" in content
    # A sweep stored before data identities were: nothing to compare.
    assert data_warnings(None, _data(sha256="d" * 64)) == []


def at_horizons(slope: float, widths=(64, 128, 256), tokens=(10**6, 4 * 10**6)):
    """Proxies whose optimum is 2^-5 at the first horizon and moves by ``slope`` log2 per
    doubling of tokens, the same at every width."""
    return [
        dataclasses.replace(o, tokens=t)
        for i, t in enumerate(tokens)
        for w in widths
        for o in curve(w, -5.0 + slope * math.log2(t / tokens[0]), seed=7 * i)
    ]


@pytest.mark.parametrize("true_slope", [0.0, -0.35, -0.7])
def test_the_horizon_slope_is_recovered_and_carries_the_optimum_to_the_target(true_slope):
    outcomes = at_horizons(true_slope)
    result = compute_transfer(outcomes, model=MODEL, to_width=1024, to_tokens=64 * 10**6)
    assert [h.tokens for h in result.horizons] == [10**6, 4 * 10**6]
    assert result.horizon is not None
    assert result.horizon.slope == pytest.approx(true_slope, abs=0.1)
    assert result.horizon.from_tokens == 4 * 10**6
    assert result.horizon.log2_shift == pytest.approx(4 * true_slope, abs=0.4)  # 16x tokens
    assert result.horizon.log2_shift_uncertainty == pytest.approx(4 * result.horizon.uncertainty)
    # 2^-5 at 1M tokens; the target trains 64x longer: 6 doublings of the slope
    assert math.log2(result.base_lr) == pytest.approx(-5.0 + 6 * true_slope, abs=0.3)
    # The width transfer itself is the longest horizon's.
    assert result.widths == result.horizons[-1].widths
    alone = compute_transfer(
        [o for o in outcomes if o.tokens == 4 * 10**6], model=MODEL, to_width=1024
    )
    assert math.log2(result.base_lr / alone.base_lr) == pytest.approx(result.horizon.log2_shift)


def test_without_the_target_s_tokens_the_longest_horizon_transfers_as_it_was_measured():
    result = compute_transfer(at_horizons(-0.5), model=MODEL, to_width=1024)
    assert result.horizon is None and len(result.horizons) == 2
    assert math.log2(result.base_lr) == pytest.approx(-6.0, abs=0.3)


def test_one_horizon_warns_only_when_the_target_trains_far_longer_or_shorter():
    outcomes = [dataclasses.replace(o, tokens=10**6) for w in (64, 128) for o in curve(w, -5)]

    def horizon_warnings(to_tokens: int | None) -> list[str]:
        result = compute_transfer(outcomes, model=MODEL, to_width=512, to_tokens=to_tokens)
        assert result.horizon is None and result.horizons == []
        return [w for w in result.warnings if "token horizon" in w]

    assert horizon_warnings(None) == horizon_warnings(10**7) == horizon_warnings(10**5) == []
    [long] = horizon_warnings(2 * 10**7)
    [short] = horizon_warnings(10**4)
    assert "20x the 1,000,000" in long and "search.steps" in long and "0.01x" in short


def test_a_deeper_target_takes_the_depth_rule_and_without_one_a_warning():
    outcomes = curve(64, -5.0) + curve(128, -5.0)
    flat = compute_transfer(outcomes, model=MODEL, to_width=1024)
    for rule, factor in (("completep", 1.0), ("sqrt", 0.5)):
        model = MODEL.model_copy(update={"depth_rule": rule, "base_depth": MODEL.depth})
        deep = compute_transfer(outcomes, model=model, to_width=1024, to_depth=4 * MODEL.depth)
        assert deep.to_depth == 4 * MODEL.depth and deep.base_lr == flat.base_lr
        assert not [w for w in deep.warnings if "depth" in w]
        for d, f in zip(deep.groups, flat.groups, strict=True):
            expected = f.lr * factor if f.group == "hidden" else f.lr
            assert d.lr == pytest.approx(expected) and d.wd == f.wd
    unruled = compute_transfer(outcomes, model=MODEL, to_width=1024, to_depth=16)
    assert [g.lr for g in unruled.groups] == [g.lr for g in flat.groups]
    assert any("no depth rule" in w for w in unruled.warnings)


def at_depths(slope: float, widths=(64, 128), depths=(2, 4, 8)):
    """Proxies whose optimum is 2^-5 at depth 2 and moves by ``slope`` log2 per doubling of
    depth, the same at every width."""
    return [
        dataclasses.replace(o, depth=d)
        for i, d in enumerate(depths)
        for w in widths
        for o in curve(w, -5.0 + slope * math.log2(d / depths[0]), seed=11 * i)
    ]


@pytest.mark.parametrize("true_slope", [0.0, 0.6])
def test_the_depth_drift_is_measured_and_warned_about_and_the_deepest_proxies_transfer(
    true_slope,
):
    model = MODEL.model_copy(update={"depth_rule": "completep", "base_depth": 2, "tau": 0.1})
    result = compute_transfer(at_depths(true_slope), model=model, to_width=1024, to_depth=16)
    assert [d.depth for d in result.depths] == [2, 4, 8]
    assert result.depth_drift is not None
    assert result.depth_drift.slope == pytest.approx(true_slope, abs=0.1)
    assert result.widths == result.depths[-1].widths  # the deepest proxies' optima
    assert math.log2(result.base_lr) == pytest.approx(-5.0 + 2 * true_slope, abs=0.2)
    warned = [w for w in result.warnings if "per doubling of depth" in w]
    assert bool(warned) == (true_slope > 0.25)
    assert all("depth_rule" in w for w in warned)


def test_a_weak_fit_at_a_shallow_depth_is_named_by_its_depth():
    outcomes = [o for o in at_depths(0.0) if not (o.depth == 2 and o.width == 64 and o.lr > 2**-5)]
    result = compute_transfer(outcomes, model=MODEL, to_width=1024)
    assert any(w.startswith("depth 2: width 64: the best LR") for w in result.warnings)
    # one depth swept: no depth axis
    flat = compute_transfer([o for o in outcomes if o.depth == 8], model=MODEL, to_width=1024)
    assert flat.depths == [] and flat.depth_drift is None
