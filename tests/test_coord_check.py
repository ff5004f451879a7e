"""Coordinate check: after a few steps µS activations do not drift with width."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from models.coord_check import coord_check
from tests.conftest import debug_config


@pytest.mark.parametrize("mlp", ["gelu", "swiglu", "smooth_swiglu"])
def test_mus_rms_after_10_steps_is_width_independent(shakespeare, mlp):
    config = debug_config(shakespeare, depth=2, batch_size=8, steps=10, precision="fp32", mlp=mlp)
    result = coord_check([64, 512], config, steps=10)
    narrow, wide = result.trained[64], result.trained[512]
    for layer, value in narrow.items():
        assert 0.5 <= wide[layer] / value <= 2.0, (layer, value, wide[layer])


def test_coord_check_cli_json_and_plot(shakespeare, tmp_path):
    plot = tmp_path / "coord.png"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweeper",
            "coord-check",
            "--widths",
            "32,64",
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--data",
            shakespeare,
            "--json",
            "--plot",
            str(plot),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    payload = json.loads(out.stdout)
    assert payload["widths"] == [32, 64]
    assert set(payload["init"]["32"]) == set(payload["trained"]["64"])
    assert plot.stat().st_size > 10_000
