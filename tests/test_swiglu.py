"""SwiGLU and Smooth-SwiGLU under µS: unit scale at init, the same function, the width rules.

Stated tolerances: the down projection's input has RMS 1 within 15% at init at every width;
Smooth-SwiGLU's logits equal SwiGLU's to 1e-5 relative with fp32 matmuls; with FP8 matmuls
they round differently but are no further from the fp32 function than SwiGLU's (within 5%).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from pydantic import ValidationError

from models import ModelConfig
from models.coord_check import layer_rms
from models.data import Batches, split_corpus
from models.gpt import GPT, SMOOTH_THRESHOLD, SmoothedLinear, SwiGLU, use_fp8
from models.steps import loss_fn, precision_context
from models.width_rules import SILU_SQUARE_MEAN, glu_multiplier
from tests.conftest import REPO, debug_config

GLU_KINDS = ("swiglu", "smooth_swiglu")


def test_silu_square_mean_is_the_gaussian_integral():
    z = torch.linspace(-40, 40, 2_000_001, dtype=torch.float64)
    density = torch.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    integral = torch.trapezoid(F.silu(z) ** 2 * density, z).item()
    assert integral == pytest.approx(SILU_SQUARE_MEAN, abs=1e-9)
    assert glu_multiplier(parametrization="mus") == pytest.approx(1.6765, abs=1e-4)
    assert glu_multiplier(parametrization="sp") == 1.0


def _probe(data: str, seq_len: int) -> torch.Tensor:
    return Batches(split_corpus(data)[0], batch_size=8, seq_len=seq_len, seed=0).next()[0]


@pytest.mark.parametrize("mlp", GLU_KINDS)
def test_down_projection_input_is_unit_scale_at_init_across_widths(shakespeare, mlp):
    for width in (64, 256, 1024):
        config = debug_config(shakespeare, width=width, mlp=mlp, precision="fp32")
        model = GPT(config.model)
        rms = layer_rms(model, _probe(shakespeare, config.model.seq_len), config)
        for block in range(config.model.depth):
            assert 0.85 <= rms[f"blocks.{block}.mlp.down.in"] <= 1.15, (width, rms)
            assert 0.85 <= rms[f"blocks.{block}.mlp.gate.in"] <= 1.15, (width, rms)


@pytest.mark.parametrize("mlp", ("gelu", *GLU_KINDS))
def test_config_counts_and_groups_match_the_model(mlp):
    config = ModelConfig(depth=2, width=96, head_dim=32, mlp=mlp, vocab_size=100)
    gpt = GPT(config)
    assert set(config.parameter_groups()) == {(g, f) for g, f, _ in gpt.parameter_groups()}
    assert config.parameter_count == sum(p.numel() for p in gpt.parameters())
    # SwiGLU: 2/3 of 4 * 96 = 256, rounded to a multiple of 64
    assert config.mlp_hidden == (384 if mlp == "gelu" else 256)


def test_bad_mlp_is_an_error_on_its_field():
    with pytest.raises(ValidationError) as error:
        ModelConfig(mlp="relu")
    assert error.value.errors()[0]["loc"] == ("mlp",)


def _with_an_outlier_channel(model: GPT) -> None:
    """Channel 3 of every block's up projection 40x larger: an outlier past the threshold."""
    with torch.no_grad():
        for block in model.blocks:
            assert isinstance(block.mlp, SwiGLU)
            block.mlp.up.weight[3] *= 40


def _logits(data: str, mlp: str, precision: str) -> tuple[torch.Tensor, GPT]:
    """Logits of a model with an outlier channel, after a training forward and backward
    (which set Smooth-SwiGLU's scales), on the same batch."""
    config = debug_config(data, mlp=mlp, precision=precision)
    torch.manual_seed(0)
    model = GPT(config.model)
    _with_an_outlier_channel(model)
    if precision == "fp8":
        use_fp8(model, grad_scale=float(config.tokens_per_step))
    x, y = Batches(split_corpus(data)[0], batch_size=8, seq_len=64, seed=0).next()
    with precision_context(config, x.device):
        loss_fn(model(x), y).backward()
    with torch.no_grad(), precision_context(config, x.device):
        return model(x).float(), model


def _relative_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()


def test_smooth_swiglu_computes_what_swiglu_computes(shakespeare):
    reference, _ = _logits(shakespeare, "swiglu", "fp32")
    smooth, model = _logits(shakespeare, "smooth_swiglu", "fp32")
    scales = [m.channel_scale for m in model.modules() if isinstance(m, SmoothedLinear)]
    assert len(scales) == model.config.depth
    for scale in scales:
        assert scale[3] > 1.0  # the outlier channel is smoothed, the others are left alone
        others = scale[torch.arange(scale.numel()) != 3]
        assert torch.equal(others, torch.ones_like(others))
    assert _relative_rms(smooth, reference) < 1e-5
    # In FP8 the two round differently, but neither is further from the exact function.
    swiglu_fp8, _ = _logits(shakespeare, "swiglu", "fp8")
    smooth_fp8, _ = _logits(shakespeare, "smooth_swiglu", "fp8")
    fp8_error = _relative_rms(swiglu_fp8, reference)
    assert _relative_rms(smooth_fp8, reference) < 1.05 * fp8_error
    assert _relative_rms(smooth_fp8, swiglu_fp8) < fp8_error


def test_smoothing_shrinks_the_outlier_before_its_fp8_cast(shakespeare):
    config = debug_config(shakespeare, mlp="smooth_swiglu", precision="fp32")
    model = GPT(config.model)
    _with_an_outlier_channel(model)
    x = _probe(shakespeare, config.model.seq_len)
    down = model.blocks[0].mlp.down
    assert isinstance(down, SmoothedLinear)
    seen: list[torch.Tensor] = []
    handle = down.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].detach()))
    model(x).sum().backward()
    handle.remove()
    raw = seen[0]
    assert raw[..., 3].abs().max() > SMOOTH_THRESHOLD
    smoothed, weight = down.fp8_operands(raw)
    assert smoothed[..., 3].abs().max() < raw[..., 3].abs().max() / 2
    # both operands of channel 3 end at the same range: sqrt(amax_x * amax_w)
    balanced = math.sqrt(raw[..., 3].abs().max().item() * down.weight[:, 3].abs().max().item())
    assert smoothed[..., 3].abs().max().item() == pytest.approx(balanced, rel=1e-5)
    assert weight[:, 3].abs().max().item() == pytest.approx(balanced, rel=1e-5)


def test_the_drift_example_specs_validate():
    """examples/drift_*.yaml: µS FP8 proxies at 128-512 with FP8 moments and with SwiGLU."""
    from sweeper.spec import SweepSpec

    specs = {
        name: SweepSpec.stored(yaml.safe_load((REPO / "examples" / f"{name}.yaml").read_text()))
        for name in ("drift_fp8_moments", "drift_swiglu")
    }
    assert specs["drift_fp8_moments"].train.optimizer_state == "fp8"
    assert specs["drift_swiglu"].train.model.mlp == "swiglu"
    for spec in specs.values():
        assert spec.widths == [128, 256, 512] and spec.train.precision == "fp8"


def test_swiglu_horizon_benchmark_runs_tiny(tmp_path):
    """benchmarks/swiglu_horizon.py in its CPU-sized form, as CI can run it."""
    from benchmarks.swiglu_horizon import main

    log = tmp_path / "horizon.jsonl"
    args = ["--tiny", "--steps", "4", "--every", "2", "--log", str(log), "--out", str(tmp_path)]
    result = main(args)
    for run in result["runs"].values():
        assert [row["step"] for row in run["history"]] == [2, 4]
        assert 0 < run["max_cast_input_over_training"] < 448  # within e4m3, finite
    assert len(log.read_text().splitlines()) == 4  # a line per measurement, as it goes
    assert (tmp_path / "swiglu_horizon_tiny.json").exists()


def test_the_launched_target_keeps_the_sweep_s_mlp_and_moments(shakespeare):
    """Sweep spec -> transfer -> launch config -> training: a sweep of Smooth-SwiGLU proxies
    with FP8 moments launches a target of the same kind, at the transferred LR."""
    from models.compressed_adam import CompressedAdamW
    from models.optim import build_optimizer
    from models.train import build_model, train
    from sweeper.launch_request import LaunchRequest, launch_config
    from sweeper.spec import SweepSpec
    from sweeper.transfer import TrialOutcome, compute_transfer
    from tests.conftest import tiny_sweep

    base = tiny_sweep(shakespeare)
    model = base["train"]["model"] | {"mlp": "smooth_swiglu"}
    spec = SweepSpec.model_validate(
        base | {"train": base["train"] | {"model": model, "optimizer_state": "fp8"}}
    )
    # µS-like proxies: the optimum at 2^-5 at both widths
    outcomes = [
        TrialOutcome(w, 2.0**x, 0.0, 2.0 + 0.05 * (x + 5) ** 2)
        for w in spec.widths
        for x in range(-8, -1)
    ]
    result = compute_transfer(outcomes, model=spec.train.model, to_width=64)
    request = LaunchRequest(sweep_id=1, to_width=64, steps=3, precision="fp32")
    config = launch_config(spec, result, request)
    assert (config.model.width, config.model.mlp) == (64, "smooth_swiglu")
    assert config.optimizer_state == "fp8" and config.lr == pytest.approx(2**-5, rel=0.05)
    optimizer, _ = build_optimizer(build_model(config, torch.device("cpu")), config)
    assert isinstance(optimizer, CompressedAdamW)
    assert math.isfinite(train(config).final_eval_loss)
