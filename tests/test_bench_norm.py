"""The fused-norm benchmark's tiny mode on CPU, under Triton's interpreter: it runs every
variant and tile end to end and writes its JSON (the numbers are the interpreter's, not
measurements; the GPU run is `bash benchmarks/run_gpu.sh norm`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.kernels.test_fp8_interpreter import _interpreter_runs_fp8, run_interpreted


def test_tiny_run_measures_every_variant(tmp_path: Path) -> None:
    reason = _interpreter_runs_fp8()
    if reason is not None:
        pytest.skip(reason)
    out = tmp_path / "bench_norm.json"
    done = run_interpreted("-m", "benchmarks.bench_norm", "--tiny", "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert payload["x_dtype"] == "fp32" and "torch" in payload["environment"]
    (row,) = payload["results"].values()
    variants = {"fused", "eager", "compiled"}
    for phase in ("forward", "backward", "forward_backward"):
        assert set(row[phase]["ratio_to_fused"]) == variants, row[phase]
        for name in variants:
            ms, gb_s = row[phase][name]["ms"], row[phase][name]["gb_s"]
            assert math.isfinite(ms) and ms > 0 and gb_s >= 0, (phase, name, row[phase][name])
    # the backward with df's e5m2 casts, in the kernel and separately
    e5m2 = row["backward_e5m2"]
    assert set(e5m2["ratio_to_fused"]) == {"fused", "separate"}, e5m2
    assert all(math.isfinite(e5m2[n]["ms"]) and e5m2[n]["ms"] > 0 for n in ("fused", "separate"))
    # the interpreter's tile and the alternatives, each run
    assert "16x32w1" in row["tiles"] and len(row["tiles"]) >= 4
    assert all("ms" in v for v in row["tiles"].values()), row["tiles"]
    # The fused kernel and the eager path did the same work: y to fp32 rounding, and the FP8
    # codes but for the few that rounding moves across an e4m3 boundary.
    same = row["fused_vs_eager"]
    assert same["y_max_abs_diff"] < 1e-5, same
    assert same["y8_codes_differing"] == same["y8t_codes_differing"] <= same["elements"] // 100
