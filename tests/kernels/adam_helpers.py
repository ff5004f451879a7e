"""The fused step of `CompressedAdamW` (`kernels.triton_adam`) against its torch path.

Shared by the interpreter checks (CPU) and the GPU tests. Every step starts both optimizers
from the same weights and state (the torch path's copied from the fused one's), so what is
compared is one step's difference, not differences grown over the steps: a moment element
that rounds the other way moves its weight by a share of the LR on the next step.

Stated tolerances:
* weights: rtol 1e-5, atol 1e-6 of the LR: the update's fp32 rounding (FMA contraction, the
  approximate sqrt and division); under the interpreter up to 3e-6 relative was seen.
* FP8 scales: equal (the same amax rule, the same correctly rounded division).
* moment codes, FP8 and bf16: equal but for ``max_flips`` of them (a value within fp32
  rounding of a stochastic rounding threshold goes the other way), and every code within one
  spacing of the torch path's. Both round onto their grid before the cast, so the
  interpreter's truncating fp32 -> bf16 cast (`interpreter_checks.py`) changes nothing.
"""

from __future__ import annotations

import torch

from models.compressed_adam import MOMENTS, CompressedAdamW, MomentPrecision

WEIGHT_RTOL = 1e-5
WEIGHT_ATOL_PER_LR = 1e-6


def _spacing_bound(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One ``dtype`` spacing at the larger of |a| and |b| (FP8 values already unscaled)."""
    info = torch.finfo(dtype)
    return info.eps * torch.maximum(a.abs(), b.abs()).clamp_min(info.smallest_normal)


def compare_fused_steps(
    shapes: list[tuple[int, ...]],
    precision: MomentPrecision,
    device: str,
    *,
    steps: int = 3,
    max_flips: float,
) -> float:
    """``steps`` steps of the fused and the torch path over parameters of ``shapes`` (half in
    a group with a tensor LR and weight decay, half with a float LR and none), asserting the
    tolerances above; returns the largest share of moment codes that differed in a step."""
    torch.manual_seed(0)
    initial = [torch.randn(shape, device=device) for shape in shapes]
    lr = torch.tensor(0.01, device=device)
    optimizers, params = [], []
    for fused in (True, False):
        group_params = [torch.nn.Parameter(p.clone()) for p in initial]
        half = len(group_params) // 2
        groups = [
            {"params": group_params[:half], "lr": lr, "weight_decay": 0.1},
            {"params": group_params[half:], "lr": 0.003, "weight_decay": 0.0},
        ]
        optimizers.append(
            CompressedAdamW(groups, betas=(0.9, 0.95), precision=precision, fused=fused)
        )
        params.append(group_params)
    fused_opt, torch_opt = optimizers
    worst = 0.0
    for step in range(steps):
        for fused_p, torch_p in zip(*params, strict=True):
            grad = torch.randn_like(fused_p) * 10.0 ** (step - 1)
            if grad.numel() > 128:
                grad.view(-1)[:128] = 0  # an all-zero first block: its scale is 2^-126
            fused_p.grad, torch_p.grad = grad.clone(), grad.clone()
        fused_opt.step()
        torch_opt.step()
        group_lrs = [float(g["lr"]) for g in fused_opt.param_groups for _ in g["params"]]
        for lr_value, fused_p, torch_p in zip(group_lrs, *params, strict=True):
            torch.testing.assert_close(
                fused_p, torch_p, rtol=WEIGHT_RTOL, atol=WEIGHT_ATOL_PER_LR * lr_value
            )
            fused_state, torch_state = fused_opt.state[fused_p], torch_opt.state[torch_p]
            flips = _compare_moments(fused_state, torch_state, max_flips=max_flips)
            worst = max(worst, flips)
            # the next step starts both from the same state again
            for key, value in fused_state.items():
                torch_state[key].copy_(value)
            with torch.no_grad():
                torch_p.copy_(fused_p)
    return worst


def _codes(moment: torch.Tensor) -> torch.Tensor:
    return moment.view(torch.uint16 if moment.dtype == torch.bfloat16 else torch.uint8)


def _compare_moments(
    fused_state: dict[str, torch.Tensor],
    torch_state: dict[str, torch.Tensor],
    *,
    max_flips: float,
) -> float:
    """Asserts one parameter's moments agree (see the module docstring); returns the largest
    share of differing codes of its two moments."""
    assert torch.equal(fused_state["step"], torch_state["step"])
    worst = 0.0
    for name in MOMENTS:
        got, expected = fused_state[name], torch_state[name]
        fp8 = got.dtype != torch.bfloat16
        if fp8:  # equal scales: the codes alone say how far apart the moments are
            assert torch.equal(fused_state[f"{name}_scale"], torch_state[f"{name}_scale"]), name
        a, b = got.float(), expected.float()
        assert (a - b).abs().le(_spacing_bound(a, b, got.dtype)).all(), name
        flips = float((_codes(got) != _codes(expected)).float().mean())
        assert flips <= max_flips, (name, flips)
        worst = max(worst, flips)
    return worst
