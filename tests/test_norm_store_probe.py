"""The norm-store probe's tiny mode on CPU, under Triton's interpreter: every variant of the
fused norm kernel it builds from the kernel's source compiles, runs, and writes right copies
there (the interpreter has no GPU's fault to find; the GPU run is
`python -m benchmarks.norm_store_probe`)."""

from __future__ import annotations

import json

import pytest

from benchmarks.norm_store_probe import VARIANTS, variant_source
from tests.kernels.test_fp8_interpreter import _interpreter_runs_fp8, run_interpreted


def test_every_variant_replaces_the_stores_and_nothing_else() -> None:
    for name in VARIANTS[1:-1]:  # "current" and "two_launches" are the kernel as it is
        source = variant_source(name)
        assert "tl.trans(back), mask=mask_t\n                )" not in source, name
        assert "def res_post_norm(" in source and "# Pass 3" in source, name
    assert "tl.debug_barrier()" in variant_source("fourth_pass")


def test_tiny_run_checks_every_variant() -> None:
    reason = _interpreter_runs_fp8()
    if reason is not None:
        pytest.skip(reason)
    done = run_interpreted("-m", "benchmarks.norm_store_probe", "--tiny")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [row["variant"] for row in rows] == VARIANTS
    for row in rows:
        assert {c["x"] for c in row["checks"]} == {"float32", "bfloat16"}, row
        for c in row["checks"]:
            assert c["wrong_y8"] == c["wrong_y8t"] == 0, row
