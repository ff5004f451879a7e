"""The whole-step throughput picture and its summary (`benchmarks.throughput_report`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.throughput_report import main, summary
from benchmarks.train_throughput import ratios


def _measured(tokens_per_s: float, step_ms: float, families: dict[str, float] | None) -> dict:
    result = {
        "status": "measured",
        "tokens_per_s": tokens_per_s,
        "step_ms_median": step_ms,
        "peak_allocated_gib": 20.0,
    }
    if families is not None:
        result["profile"] = {"kernel_ms": sum(families.values()), "family_ms": families}
    return result


def _payload() -> dict:
    """Width 4096 profiled (ours, BF16; torchao skipped), width 8192 not (BF16 failed)."""
    rows = []
    for width, variants in {
        4096: {
            "fp8-compiled": _measured(180e3, 180.0, {"gemm": 100.0, "fp8_cast": 15.0}),
            "bf16-compiled": _measured(120e3, 270.0, {"gemm": 220.0, "inductor": 40.0}),
            "torchao-tensorwise": {"status": "skipped", "reason": "torchao is not installed"},
        },
        8192: {
            "fp8-compiled": _measured(100e3, 330.0, None),
            "bf16-compiled": {"status": "error", "error": "CUDA out of memory"},
        },
    }.items():
        shape = {"width": width, "depth": 2, "batch": 16, "seq_len": 2048}
        rows.append({**shape, "variants": variants, "ratios": ratios(variants)})
    environment = {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11", "triton": "3.6"}
    return {"benchmark": "train_throughput", "environment": environment, "rows": rows}


def test_the_summary_has_each_measured_variant_with_its_ratio_and_profile() -> None:
    rows = summary(_payload())
    assert [(r["width"], r["variant"]) for r in rows] == [
        (4096, "fp8-compiled"),
        (4096, "bf16-compiled"),
        (8192, "fp8-compiled"),
    ]
    ours, bf16, alone = rows
    assert ours["over_bf16_compiled"] == pytest.approx(1.5) and bf16["over_bf16_compiled"] == 1.0
    assert ours["kernel_ms"] == pytest.approx(115.0)
    assert ours["family_ms"] == {"gemm": 100.0, "fp8_cast": 15.0}
    # no BF16 at 8192 to compare with, no profile: said, not invented
    assert alone["over_bf16_compiled"] is None and alone["family_ms"] is None


def test_the_picture_is_drawn(tmp_path: Path) -> None:
    results = tmp_path / "train_throughput.json"
    results.write_text(json.dumps(_payload()))
    rows = main(["--results", str(results), "--out", str(tmp_path / "tt.png")])
    assert len(rows) == 3
    assert (tmp_path / "tt.png").stat().st_size > 10_000


def test_another_benchmarks_results_are_refused(tmp_path: Path) -> None:
    results = tmp_path / "gemm.json"
    results.write_text(json.dumps({"benchmark": "gemm", "rows": []}))
    with pytest.raises(SystemExit) as stopped:
        main(["--results", str(results), "--out", str(tmp_path / "tt.png")])
    assert stopped.value.code == 2
    assert not (tmp_path / "tt.png").exists()
