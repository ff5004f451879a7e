"""Every width rule, at several widths, against its formula (DESIGN.md, µS recipe)."""

from __future__ import annotations

import math

import pytest

from models.width_rules import PARAM_GROUPS, group_rule

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
