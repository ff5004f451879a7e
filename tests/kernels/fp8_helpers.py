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
