"""The emulated FP8 linear against float64 math (tests/kernels covers saturation and dispatch)."""

from __future__ import annotations

import pytest
import torch

from kernels import E4M3, E5M2, fp8_linear, saturating_cast


def test_cast_rounds_to_nearest_representable():
    x = torch.randn(10_000) * 10
    for dtype, mantissa_bits in ((E4M3, 3), (E5M2, 2)):
        y = saturating_cast(x, dtype).float()
        assert saturating_cast(y, dtype).float().equal(y)  # idempotent: y is on the grid
        # Round to nearest: relative error at most half an ulp (2^-4 for e4m3, 2^-3 e5m2)
        normal = x.abs() > 2 ** (-6 if dtype == E4M3 else -14)
        half_ulp = 2.0 ** -(mantissa_bits + 1)
        assert ((y - x).abs() / x.abs())[normal].max() <= half_ulp + 1e-7


def float64_reference(x, w, g, scale, grad_scale):
    """The same casts, then float64 math: forward, dgrad and wgrad."""
    x8, w8 = (saturating_cast(t, E4M3).double() for t in (x, w))
    g8 = saturating_cast(g.double() * grad_scale, E5M2).double()
    y = x8 @ w8.T * scale
    return y, g8 @ w8 * scale / grad_scale, g8.T @ x8 * scale / grad_scale


@pytest.mark.parametrize("grad_scale", [1.0, 1024.0, 2.0**20])
def test_forward_and_gradients_match_float64(grad_scale):
    x = torch.randn(64, 96, requires_grad=True)
    w = torch.randn(48, 96, requires_grad=True)
    g = torch.randn(64, 48) / grad_scale  # a gradient as small as a mean loss makes it
    scale = 96**-0.5
    y = fp8_linear(x, w, scale=scale, grad_scale=grad_scale)
    y.backward(g.to(y.dtype))
    ref_y, ref_dx, ref_dw = float64_reference(
        x.detach(), w.detach(), g.bfloat16().float(), scale, grad_scale
    )
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), ref_y, rtol=2**-8, atol=1e-6)  # bf16 output
    torch.testing.assert_close(x.grad.double(), ref_dx, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(w.grad.double(), ref_dw, rtol=1e-5, atol=1e-9)
