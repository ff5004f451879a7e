"""Shared by the FP8 kernel tests: the error measure and the bounds against a BF16 linear.

Bounds against a BF16 linear come from the formats: rounding to e4m3 (3 mantissa bits)
leaves a uniform relative error of at most 2^-4 per operand, RMS 2^-4/sqrt(3) = 0.036; e5m2
(2 bits) RMS 0.072. A product of two independently rounded operands has a relative
Frobenius error near sqrt(0.036^2 + 0.036^2) = 0.051 (forward) and sqrt(0.072^2 + 0.036^2)
= 0.081 (gradients). The bounds leave about 30% headroom on those.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import torch
import torch.nn.functional as F

from kernels import using_fp8_backend
from models.config import ModelConfig
from models.gpt import GPT, ScaledLinear, use_fp8

FWD_VS_BF16 = 0.065
GRAD_X_VS_BF16 = 0.105
GRAD_W_VS_BF16 = 0.105


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative Frobenius error ||actual - expected|| / ||expected||, in float64."""
    a, e = actual.double(), expected.double()
    return ((a - e).norm() / e.norm()).item()


def assert_fp8_cast_of(
    got: torch.Tensor, value: torch.Tensor, scale: float, *, atol: float, rtol: float = 0.0
) -> None:
    """``got`` (an FP8 tensor) is the saturating cast of ``value * scale`` as computed in
    lower precision: within half an FP8 step of the exact (float64) value, plus what that
    computation may be off by before the cast (``atol`` in ``value``'s units, ``rtol`` for a
    rounding on the way, e.g. to bf16), everywhere.

    Why not bit equality with a second kernel's cast of the same quantity: where a value is
    a difference of nearly equal terms (the LayerNorm gradient's ``g - mean(g) - n *
    mean(g n)``), the last fp32 bit of sums reduced in a different order is many FP8 steps
    of the small result. A bound from the exact value checks the cast itself."""
    fmt = torch.finfo(got.dtype)
    target = (value.double() * scale).clamp(-fmt.max, fmt.max)
    half_step = fmt.eps / 2  # relative, for normals: e5m2 2^-3, e4m3 2^-4
    bound = (
        (half_step + rtol) * target.abs()
        + atol * scale * (1 + half_step)
        + fmt.smallest_normal * half_step  # subnormals' fixed step
    )
    excess = (got.double() - target).abs() / bound
    worst = excess.max().item() if excess.numel() else 0.0
    assert worst <= 1.0, f"{worst:.2f} times the bound off the exact cast"


def bf16_linear_grads(
    x: torch.Tensor, w: torch.Tensor, g: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output and gradients of a plain BF16 linear layer ``(x @ w.T) * scale``."""
    xb = x.detach().to(torch.bfloat16).requires_grad_()
    wb = w.detach().to(torch.bfloat16).requires_grad_()
    y = F.linear(xb, wb) * scale
    y.backward(g.to(torch.bfloat16))
    assert xb.grad is not None and wb.grad is not None
    return y, xb.grad, wb.grad


def gpt_logits_and_grads(
    device: str, *, width: int, mlp: str, tokens: tuple[int, int], backend: str, fused: bool
) -> dict[str, torch.Tensor]:
    """A µS FP8 GPT's logits and gradients (``logits``, ``grad.<parameter>``), under the
    trainer's bf16 autocast: the same model and batch on every call.

    ``backend``: the FP8 backend (``"triton"`` or ``"emulate"``). ``fused``: on the Triton
    path, each Res-Post-LN is `kernels.triton_norm`'s kernel, whose e4m3 casts the next
    layers take (`models.gpt.Block`); False makes every layer cast its own input instead.
    """
    batch, seq_len = tokens
    config = ModelConfig(width=width, depth=2, head_dim=16, seq_len=seq_len, mlp=mlp)
    torch.manual_seed(0)
    idx = torch.randint(0, config.vocab_size, (batch, seq_len), device=device)
    model = GPT(config).to(device)
    use_fp8(model, grad_scale=float(batch * seq_len) * width**0.5)
    unfused = mock.patch.object(ScaledLinear, "takes_e4m3_copies", lambda self, x: False)
    with (
        contextlib.nullcontext() if fused else unfused,
        using_fp8_backend(backend),
        torch.autocast(device, dtype=torch.bfloat16),
    ):
        logits = model(idx)
        F.cross_entropy(logits.flatten(0, 1).float(), idx.flatten()).backward()
    out = {"logits": logits.detach()}
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        out[f"grad.{name}"] = p.grad
    return out


def norm_after_op_runs(
    device: str, *, kind: str, tokens: int, width: int
) -> dict[str, dict[str, torch.Tensor]]:
    """A projection (``kind`` "linear": an FP8 linear layer of width -> width; "gelu_mlp":
    the GELU MLP, width -> 4 width -> width) whose output goes into the µS block's
    Res-Post-LN, run two ways on the same inputs under the trainer's bf16 autocast: "fused"
    (the norm inside the projection's op, `kernels.ops.fp8_linear_norm_triton`) and
    "composed" (``then(projection(...))``). Each run's output, its e4m3 casts and the
    gradients of the input, the weights, the residual stream (the MLP's: its input) and
    the gain."""
    from kernels.ops import (
        fp8_gelu_mlp_norm_triton,
        fp8_gelu_mlp_triton,
        fp8_linear_norm_triton,
        fp8_linear_triton,
    )
    from kernels.triton_norm import ResidualNorm

    torch.manual_seed(0)
    hidden = width if kind == "linear" else 4 * width
    x0 = torch.randn(2, tokens // 2, width, device=device)
    weights0 = [torch.randn(hidden, width, device=device)]
    if kind == "gelu_mlp":
        weights0.append(torch.randn(width, hidden, device=device))
    resid0 = torch.randn(2, tokens // 2, width, device=device)
    gain0 = 1 + 0.2 * torch.randn(width, device=device)
    dy = torch.randn(2, tokens // 2, width, device=device)
    grad_scale = float(tokens) * width**0.5
    scales = (width**-0.5, hidden**-0.5)
    runs = {}
    for name in ("fused", "composed"):
        x, resid, gain, *weights = (
            t.clone().requires_grad_() for t in (x0, resid0, gain0, *weights0)
        )
        if kind == "gelu_mlp":  # the block's MLP adds to the stream it reads
            resid = x
        then = ResidualNorm(resid, gain, 0.8, 0.6, 1e-5)
        with torch.autocast(device, dtype=torch.bfloat16):
            if kind == "linear":
                kwargs = {"scale": scales[0], "grad_scale": grad_scale}
                if name == "fused":
                    y, y8 = fp8_linear_norm_triton(x, weights[0], then=then, **kwargs)
                else:
                    y, y8 = then(fp8_linear_triton(x, weights[0], **kwargs))
            else:
                kwargs = {"scales": scales, "grad_scale": grad_scale}
                if name == "fused":
                    y, y8 = fp8_gelu_mlp_norm_triton(x, *weights, then=then, **kwargs)
                else:
                    y, y8 = then(fp8_gelu_mlp_triton(x, *weights, **kwargs))
        y.backward(dy)
        leaves = {"x": x, "resid": resid, "gain": gain}
        leaves |= {f"w{i}": w for i, w in enumerate(weights)}
        runs[name] = {
            "y": y.detach(),
            "y8": y8.rows.view(torch.uint8),
            "y8t": y8.cols.view(torch.uint8),
        }
        for key, leaf in leaves.items():
            assert leaf.grad is not None, key
            runs[name][f"grad.{key}"] = leaf.grad
    return runs
