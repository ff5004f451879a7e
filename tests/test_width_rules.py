"""Every width rule, at several widths, against its formula (DESIGN.md, µS recipe)."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from models import ModelConfig
from models.width_rules import PARAM_GROUPS, Depth, group_rule

WIDTHS = [64, 128, 512, 4096, 8192]
BASE_LR, BASE_WD, BASE_WIDTH = 2**-5, 0.1, 256


def rule(group, parametrization, fan_in, **kw):
    return group_rule(
        group,
        parametrization=parametrization,
        fan_in=fan_in,
        base_lr=BASE_LR,
        base_wd=BASE_WD,
        base_width=BASE_WIDTH,
        **kw,
    )


@pytest.mark.parametrize("fan_in", WIDTHS + [4 * w for w in WIDTHS])
def test_mus_hidden(fan_in):
    r = rule("hidden", "mus", fan_in)
    assert r.init_std == 1.0
    assert r.multiplier == pytest.approx(1 / math.sqrt(fan_in))
    assert r.lr == pytest.approx(BASE_LR * math.sqrt(BASE_WIDTH / fan_in))
    assert r.wd == BASE_WD


@pytest.mark.parametrize("width", WIDTHS)
def test_mus_embedding_norm_readout(width):
    emb, norm = rule("embedding", "mus", width), rule("norm", "mus", width)
    for r in (emb, norm):
        assert (r.init_std, r.multiplier, r.lr, r.wd) == (1.0, 1.0, BASE_LR, 0.0)
    readout = rule("readout", "mus", width, readout_multiplier=2.0)
    assert readout.init_std == 1.0
    assert readout.multiplier == pytest.approx(2.0 / math.sqrt(width))
    assert readout.lr == BASE_LR  # constant in width by default
    assert readout.wd == BASE_WD
    scaled = rule("readout", "mus", width, readout_lr="sqrt")
    assert scaled.lr == pytest.approx(BASE_LR * math.sqrt(BASE_WIDTH / width))


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("group", PARAM_GROUPS)
def test_sp_has_no_width_rules(group, width):
    r = rule(group, "sp", width)
    assert r.init_std == (1.0 if group == "norm" else 0.02)
    assert r.multiplier == 1.0
    assert r.lr == BASE_LR
    assert r.wd == (BASE_WD if group in ("hidden", "readout") else 0.0)


def test_mus_hidden_lr_is_base_at_base_width():
    assert rule("hidden", "mus", BASE_WIDTH).lr == BASE_LR


@pytest.mark.parametrize(("rule", "alpha"), [("none", 0.0), ("sqrt", 0.5), ("completep", 1.0)])
def test_depth_rules_scale_tau_and_the_hidden_lr_only(rule, alpha):
    """Branch multiplier (L0/L)^alpha: tau times its square; Adam's hidden LR times
    (L0/L)^(1-alpha) (CompleteP: constant; Depth-µP: 1/sqrt(L)); `none` changes nothing."""
    depth = Depth(depth=16, base=4, rule=rule)
    assert depth.branch_share(0.4) == pytest.approx(0.4 * 0.25 ** (2 * alpha))
    lr_factor = 1.0 if rule == "none" else 0.25 ** (1 - alpha)
    assert depth.hidden_lr_factor() == pytest.approx(lr_factor)
    flat = {
        g: group_rule(
            g, parametrization="mus", fan_in=1024, base_lr=0.01, base_wd=1e-3, base_width=256
        )
        for g in PARAM_GROUPS
    }
    deep = {
        g: group_rule(
            g,
            parametrization="mus",
            fan_in=1024,
            base_lr=0.01,
            base_wd=1e-3,
            base_width=256,
            depth=depth,
        )
        for g in PARAM_GROUPS
    }
    assert deep["hidden"].lr == pytest.approx(flat["hidden"].lr * lr_factor)
    for group in PARAM_GROUPS:
        assert deep[group].wd == flat[group].wd and deep[group].init_std == flat[group].init_std
        if group != "hidden":
            assert deep[group] == flat[group]


def test_a_depth_rule_is_refused_where_it_has_no_meaning():
    with pytest.raises(ValidationError, match="mus parametrization only"):
        ModelConfig(parametrization="sp", depth_rule="completep")
    # shallower than the proxies, tau grows: past 1 there is no skip left
    with pytest.raises(ValidationError, match="not below 1"):
        ModelConfig(depth=1, base_depth=4, tau=0.4, depth_rule="sqrt")
    assert ModelConfig(depth=1, base_depth=4, tau=0.2, depth_rule="sqrt").branch_tau == 0.8
