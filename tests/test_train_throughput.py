"""The training-throughput benchmark's tiny mode on CPU: its JSON, skips, FLOPs and swaps."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks.common import GpuSampler
from benchmarks.train_throughput import (
    SHAPES,
    TINY,
    NNLinear,
    ScaledMMLinear,
    check_optimizer_holds_every_parameter,
    estimated_peak_gib,
    flops_per_token,
    measure,
    peak_tflops,
    replace_hidden_linears,
    train_config,
)
from models import ModelConfig
from models.gpt import hidden_linears
from models.optim import build_optimizer
from models.train import build_model

REPO = Path(__file__).resolve().parents[1]
TORCHAO_INSTALLED = importlib.util.find_spec("torchao") is not None


def _tiny_spec(variant: str) -> dict[str, object]:
    shape = {k: v for k, v in TINY.items() if k != "widths"}
    return {**shape, "width": 64, "variant": variant, "steps": 2, "warmup": 1, "device": "cpu"}


def _assert_measured(result: dict[str, object]) -> None:
    assert result["status"] == "measured"
    for key in ("tokens_per_s", "step_ms_median", "model_tflops_per_s", "final_loss"):
        value = result[key]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
    steps = result["step_ms"]
    assert isinstance(steps, list) and len(steps) == 2 and all(ms > 0 for ms in steps)
    assert result["mfu"] is None and result["mfu_peak_tflops"] is None  # no peak for a CPU


def test_tiny_run_writes_measured_and_skipped_variants(tmp_path: Path) -> None:
    # fp8-eager is measured (the emulation); the others need CUDA or torchao.
    variants = ["fp8-eager", "fp8-graphs", "scaled-mm-compiled", "fp8-compiled-cublas-gemms"]
    if not TORCHAO_INSTALLED:  # where it is, its emulation compiles for a minute on CPU
        variants.append("torchao-rowwise")
    out, log = tmp_path / "tt.json", tmp_path / "logs" / "tt.jsonl"
    command = [
        *(sys.executable, "-m", "benchmarks.train_throughput", "--tiny", "--device", "cpu"),
        *("--steps", "2", "--warmup", "1", "--variants", ",".join(variants)),
        *("--out", str(out), "--log", str(log)),
    ]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, timeout=120)

    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "train_throughput" and "torch" in payload["environment"]
    [row] = payload["rows"]
    assert (row["width"], row["depth"], row["seq_len"]) == (64, 1, 32)
    assert row["estimated_peak_gib"] > 0
    assert list(row["variants"]) == variants
    _assert_measured(row["variants"]["fp8-eager"])
    assert (
        row["variants"]["fp8-eager"]["params"]
        == ModelConfig(width=64, depth=1, head_dim=16, seq_len=32).parameter_count
    )
    for name in variants[1:]:
        skipped = row["variants"][name]
        assert skipped["status"] == "skipped" and skipped["reason"], name
    assert "CUDA" in row["variants"]["fp8-graphs"]["reason"]
    assert "pinned GEMM library" in row["variants"]["fp8-compiled-cublas-gemms"]["reason"]
    if not TORCHAO_INSTALLED:
        assert "torchao is not installed" in row["variants"]["torchao-rowwise"]["reason"]
    # no BF16 compiled and no torchao measured: the ratios say so instead of inventing one
    assert row["ratios"]["best_torchao"] is None
    assert row["ratios"]["fp8-eager"]["over_bf16_compiled"] is None
    # a JSON line per measurement and one of ratios, as they finished
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line.get("variant") for line in lines] == [*variants, None]


def test_bf16_eager_in_process() -> None:
    result = measure(_tiny_spec("bf16-eager"))
    _assert_measured(result)
    assert "gpu_readings" not in result  # on CPU there is no nvidia-smi to read


def test_gpu_readings_are_medians_over_the_timed_window() -> None:
    """nvidia-smi's CSV lines as the sampler's thread hands them over: lines outside the
    window, "[N/A]" readings and malformed lines take no part."""
    sampler = GpuSampler(["clocks.sm", "power.draw"])
    lines = [
        (0.5, "1980, 300.0\n"),  # before the timed steps
        (1.0, "1755, 699.5\n"),
        (2.0, "1650, [N/A]\n"),
        (2.5, "No devices were found\n"),
        (3.0, "1600, 700.0\n"),
        (9.0, "1980, 100.0\n"),  # after
    ]
    for at, line in lines:
        sampler.add(at, line)
    assert sampler.median("clocks.sm", 1.0, 3.0) == 1650
    assert sampler.median("power.draw", 1.0, 3.0) == pytest.approx(699.75)
    assert sampler.median("power.draw", 4.0, 5.0) is None
    sampler.stop()  # never started: nothing to stop, no error


def test_flops_per_token_is_six_n_plus_attention() -> None:
    model = ModelConfig(width=4096, depth=4, head_dim=128, seq_len=2048, vocab_size=256)
    n = 4 * (12 * 4096**2 + 2 * 4096) + 256 * 4096 + 4096  # blocks, readout, final norm
    assert flops_per_token(model) == 6 * n + 12 * 4 * 2048 * 4096


def test_peak_is_by_device_and_dtype_and_none_elsewhere() -> None:
    assert (peak_tflops("NVIDIA H200", "bf16"), peak_tflops("NVIDIA H200", "fp8")) == (989, 1979)
    assert peak_tflops("NVIDIA A10", "bf16") is None and peak_tflops(None, "fp8") is None


def test_default_shapes_fit_an_h200() -> None:
    for width, (depth, batch) in SHAPES.items():
        model = ModelConfig(width=width, depth=depth, head_dim=128, seq_len=2048, vocab_size=256)
        assert 40 < estimated_peak_gib(model, batch) < 0.9 * 141, width


@pytest.mark.parametrize("layer_class", [ScaledMMLinear, NNLinear])
def test_swapped_layers_keep_the_weights_the_optimizer_steps(layer_class: type) -> None:
    config = train_config(_tiny_spec("scaled-mm-compiled"))
    model = build_model(config, torch.device("cpu"))
    x = torch.randn(2, 32, 64)
    weights = {name: layer.weight for name, layer in hidden_linears(model)}
    expected = {  # the layers that take x: fan-in 64
        name: x @ layer.weight.t() * layer.multiplier
        for name, layer in hidden_linears(model)
        if layer.fan_in == 64
    }
    replace_hidden_linears(model, layer_class)
    swapped = dict(hidden_linears(model))
    assert all(isinstance(layer, layer_class) for layer in swapped.values())
    assert all(swapped[name].weight is weight for name, weight in weights.items())
    optimizer, _ = build_optimizer(model, config)
    assert check_optimizer_holds_every_parameter(model, optimizer) == config.model.parameter_count
    if layer_class is NNLinear:  # the torchao wrapper computes the layer it replaces
        for name, y in expected.items():
            torch.testing.assert_close(swapped[name](x), y)


def test_a_parameter_outside_the_optimizer_is_an_error() -> None:
    config = train_config(_tiny_spec("bf16-eager"))
    model = build_model(config, torch.device("cpu"))
    optimizer, _ = build_optimizer(model, config)
    model.extra = nn.Linear(4, 4)  # e.g. a converted layer with weights of its own
    with pytest.raises(RuntimeError, match="not optimised"):
        check_optimizer_holds_every_parameter(model, optimizer)
