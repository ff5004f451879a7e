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
