"""The µS FP8 linear layer: static scales only, no amax anywhere.

Under unit scaling every operand of a hidden matmul sits near unit variance, so it fits
e4m3's range (±448) as it is. An FP8 linear layer is then nothing more than saturating casts,
a matmul with fp32 accumulation and the static ``1/sqrt(fan_in)`` on its output.

Backward: with a mean-reduced loss the gradient reaching a hidden layer is ~1/tokens, far
below e5m2's smallest subnormal (2^-16) for realistic batch sizes. The incoming gradient is
multiplied by a static ``grad_scale`` before its e5m2 cast and the product is divided by it
after the matmul, so the returned gradients are those of the unscaled loss.

This module is the numerical reference: the CPU path *is* this code, and the Triton kernels
must match it (same casts, fp32 math).
"""

from __future__ import annotations

from typing import Any

import torch

E4M3 = torch.float8_e4m3fn
E5M2 = torch.float8_e5m2
E4M3_MAX = torch.finfo(E4M3).max  # 448.0
E5M2_MAX = torch.finfo(E5M2).max  # 57344.0


def saturating_cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round ``x`` to ``dtype`` (e4m3fn or e5m2), clamping out-of-range values to ±max.

    torch's plain cast turns overflow into NaN (e4m3fn has no inf) or inf (e5m2); training
    without dynamic scales must saturate instead. NaN inputs stay NaN.
    """
    limit = torch.finfo(dtype).max
    return x.float().clamp(-limit, limit).to(dtype)


def _matmul_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Product of two FP8 tensors with exact fp32 operands (FP8 values are fp32-representable)."""
    return a.float() @ b.float()


class _FP8LinearEmulated(torch.autograd.Function):
    """``y = (e4m3(x) @ e4m3(w).T) * scale`` with e5m2 gradients, computed in fp32."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, scale: float, grad_scale: float
    ) -> torch.Tensor:
        x8 = saturating_cast(x, E4M3)  # (..., K)
        w8 = saturating_cast(weight, E4M3)  # (N, K)
        ctx.save_for_backward(x8, w8)
        ctx.scale, ctx.grad_scale = scale, grad_scale
        ctx.x_dtype, ctx.w_dtype = x.dtype, weight.dtype
        y = _matmul_fp32(x8, w8.t()) * scale  # (..., N)
        return y.to(torch.bfloat16)

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x8, w8 = ctx.saved_tensors
        # One static factor restores gradients to near unit scale before the e5m2 cast;
        # dividing it out again after the matmul keeps the math that of the true loss.
        g8 = saturating_cast(grad_y.float() * ctx.grad_scale, E5M2)  # (..., N)
        unscale = ctx.scale / ctx.grad_scale
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = (_matmul_fp32(g8, w8) * unscale).to(ctx.x_dtype)  # (..., K)
        if ctx.needs_input_grad[1]:
            g2d, x2d = g8.reshape(-1, g8.shape[-1]), x8.reshape(-1, x8.shape[-1])
            grad_w = (_matmul_fp32(g2d.t(), x2d) * unscale).to(ctx.w_dtype)  # (N, K)
        return grad_x, grad_w, None, None


def fp8_linear(
    x: torch.Tensor, weight: torch.Tensor, *, scale: float, grad_scale: float
) -> torch.Tensor:
    """FP8 linear layer without bias: ``(x @ weight.T) * scale`` in e4m3/e5m2, output bf16.

    Args:
        x: activations ``(..., K)``, any float dtype.
        weight: master weights ``(N, K)``, usually fp32.
        scale: the static output multiplier (µS: ``1/sqrt(K)``).
        grad_scale: the static factor applied to the output gradient before its e5m2 cast
            and removed after the backward matmuls.
    """
    return _FP8LinearEmulated.apply(x, weight, scale, grad_scale)
