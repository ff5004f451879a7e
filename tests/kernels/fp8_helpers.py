"""Shared by the FP8 kernel tests: the error measure and the bounds against a BF16 linear.

Bounds against a BF16 linear come from the formats: rounding to e4m3 (3 mantissa bits)
leaves a uniform relative error of at most 2^-4 per operand, RMS 2^-4/sqrt(3) = 0.036; e5m2
(2 bits) RMS 0.072. A product of two independently rounded operands has a relative
Frobenius error near sqrt(0.036^2 + 0.036^2) = 0.051 (forward) and sqrt(0.072^2 + 0.036^2)
= 0.081 (gradients). The bounds leave about 30% headroom on those.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import using_fp8_backend
from models.config import ModelConfig
from models.gpt import GPT, use_fp8

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


def gpt_on_both_backends(
    device: str, *, width: int, mlp: str, tokens: tuple[int, int]
) -> tuple[dict[str, float], GPT]:
    """A µS FP8 GPT's logits and gradients on the Triton path against the emulation.

    The Triton path runs each Res-Post-LN as `kernels.triton_norm`'s kernel and hands its
    e4m3 casts to the next layers (`models.gpt.Block`); the emulation casts in each layer.
    Returns the relative errors by name (``logits``, ``grad.<parameter>``) and the Triton
    path's model, under the trainer's bf16 autocast.
    """
    batch, seq_len = tokens
    config = ModelConfig(width=width, depth=2, head_dim=16, seq_len=seq_len, mlp=mlp)
    idx = torch.randint(0, config.vocab_size, (batch, seq_len), device=device)
    runs: list[tuple[torch.Tensor, GPT]] = []
    for backend in ("triton", "emulate"):
        torch.manual_seed(0)
        model = GPT(config).to(device)
        use_fp8(model, grad_scale=float(batch * seq_len) * width**0.5)
        with using_fp8_backend(backend), torch.autocast(device, dtype=torch.bfloat16):
            logits = model(idx)
            F.cross_entropy(logits.flatten(0, 1).float(), idx.flatten()).backward()
        runs.append((logits.detach(), model))
    (logits, fused), (logits_ref, emulated) = runs
    errors = {"logits": rel_err(logits, logits_ref)}
    for (name, p), p_ref in zip(fused.named_parameters(), emulated.parameters(), strict=True):
        assert p.grad is not None and p_ref.grad is not None, name
        errors[f"grad.{name}"] = rel_err(p.grad, p_ref.grad)
    return errors, fused
