"""The FP8 emulation (the numerical reference) and the dispatch, on CPU: these always run."""

from __future__ import annotations

import math

import pytest
import torch
from fp8_helpers import FWD_VS_BF16, GRAD_W_VS_BF16, GRAD_X_VS_BF16, bf16_linear_grads, rel_err

import kernels
from kernels import E4M3, E4M3_MAX, E5M2, E5M2_MAX, fp8_linear_reference, saturating_cast


@pytest.mark.parametrize("dtype", [E4M3, E5M2])
def test_saturating_cast_saturates_and_keeps_nan(dtype: torch.dtype) -> None:
    limit = torch.finfo(dtype).max
    x = torch.tensor([1e9, -1e9, math.inf, -math.inf, math.nan, limit, 0.0])
    y = saturating_cast(x, dtype).float()
    assert y[:4].tolist() == [limit, -limit, limit, -limit]
    assert math.isnan(y[4].item())
    assert y[5].item() == limit and y[6].item() == 0.0


@pytest.mark.parametrize("dtype", [E4M3, E5M2])
def test_saturating_cast_rounds_like_torch_in_range(dtype: torch.dtype) -> None:
    limit = torch.finfo(dtype).max
    x = torch.randn(10_000) * torch.logspace(-6, math.log10(limit), 10_000)
    x = x.clamp(-limit, limit)
    assert torch.equal(saturating_cast(x, dtype).view(torch.uint8), x.to(dtype).view(torch.uint8))


def test_constants() -> None:
    assert (E4M3_MAX, E5M2_MAX) == (448.0, 57344.0)


def test_reference_forward_is_scaled_fp8_matmul() -> None:
    x, w = torch.randn(3, 5, 64), torch.randn(32, 64)
    y = fp8_linear_reference(x, w, scale=0.125, grad_scale=1.0)
    expected = (x.to(E4M3).float() @ w.to(E4M3).float().T) * 0.125
    assert y.dtype == torch.bfloat16 and y.shape == (3, 5, 32)
    assert torch.equal(y, expected.to(torch.bfloat16))


def test_reference_gradients_are_e5m2_matmuls() -> None:
    x = torch.randn(40, 64, requires_grad=True)
    w = torch.randn(32, 64, requires_grad=True)
    g = (torch.randn(40, 32) * 1e-4).to(torch.bfloat16)  # the output, and so its gradient, is bf16
    grad_scale, scale = 1024.0, 0.125
    fp8_linear_reference(x, w, scale=scale, grad_scale=grad_scale).backward(g)
    g8 = (g.float() * grad_scale).to(E5M2).float()
    x8, w8 = x.detach().to(E4M3).float(), w.detach().to(E4M3).float()
    assert x.grad is not None and w.grad is not None
    assert torch.allclose(x.grad, g8 @ w8 * (scale / grad_scale), rtol=1e-6, atol=0)
    assert torch.allclose(w.grad, g8.T @ x8 * (scale / grad_scale), rtol=1e-6, atol=0)
    assert x.grad.dtype == x.dtype and w.grad.dtype == w.dtype


def test_gradient_scale_prevents_underflow() -> None:
    """A mean-reduced loss over 16k tokens gives hidden-layer gradients near 1e-6, mostly
    under e5m2's smallest subnormal (2^-16 = 1.5e-5): without a static scale they flush to
    zero and the input gradient is lost; with it, it is as good as e5m2 allows."""
    x = torch.randn(64, 128)
    w = torch.randn(64, 128)
    g = torch.randn(64, 64) * 1e-6
    exact = (g @ w.to(E4M3).float()) * 128**-0.5
    errors = {}
    for grad_scale in (1.0, 2.0**20):
        xg = x.clone().requires_grad_()
        fp8_linear_reference(xg, w, scale=128**-0.5, grad_scale=grad_scale).backward(g)
        assert xg.grad is not None
        errors[grad_scale] = rel_err(xg.grad, exact)
    assert errors[1.0] > 0.5
    assert errors[2.0**20] < 0.1


def test_reference_against_bf16_linear() -> None:
    x = torch.randn(256, 512, requires_grad=True)
    w = torch.randn(384, 512, requires_grad=True)
    g = torch.randn(256, 384)
    scale = 512**-0.5
    y = fp8_linear_reference(x, w, scale=scale, grad_scale=1.0)
    y.backward(g)
    y_ref, gx_ref, gw_ref = bf16_linear_grads(x, w, g, scale)
    assert x.grad is not None and w.grad is not None
    assert rel_err(y, y_ref) < FWD_VS_BF16
    assert rel_err(x.grad, gx_ref) < GRAD_X_VS_BF16
    assert rel_err(w.grad, gw_ref) < GRAD_W_VS_BF16


def test_reference_ignores_autocast() -> None:
    """The trainer runs FP8 layers inside a bf16 autocast region: the emulation must still
    multiply in fp32, or it would stop being the reference."""
    x, w = torch.randn(64, 256), torch.randn(64, 256)
    plain = fp8_linear_reference(x, w, scale=1 / 16, grad_scale=1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = fp8_linear_reference(x, w, scale=1 / 16, grad_scale=1.0)
    assert torch.equal(plain, autocast)


def test_dispatch_on_cpu_uses_the_emulation() -> None:
    x = torch.randn(8, 64)
    assert kernels.fp8_backend() in kernels.BACKENDS
    if kernels.fp8_backend() == "auto":
        assert not kernels.uses_triton(x)
    w = torch.randn(16, 64)
    with_dispatch = kernels.fp8_linear(x, w, scale=0.125, grad_scale=1.0)
    assert torch.equal(with_dispatch, fp8_linear_reference(x, w, scale=0.125, grad_scale=1.0))


def test_backend_switch() -> None:
    before = kernels.fp8_backend()
    try:
        kernels.set_fp8_backend("emulate")
        assert kernels.fp8_backend() == "emulate"
        assert not kernels.uses_triton(torch.empty(1))
        with pytest.raises(ValueError, match="backend"):
            kernels.set_fp8_backend("cublas")  # type: ignore[arg-type]
    finally:
        kernels.set_fp8_backend(before)


def test_compiled_matches_eager() -> None:
    """dynamo traces the dispatch and the autograd Function without graph breaks."""
    x = torch.randn(2, 16, 64, requires_grad=True)
    w = torch.randn(32, 64, requires_grad=True)
    g = torch.randn(2, 16, 32)

    def layer(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return kernels.fp8_linear(x, w, scale=0.125, grad_scale=64.0)

    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    y_eager = layer(x, w)
    y_eager.backward(g)
    assert x.grad is not None and w.grad is not None
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    y_comp = compiled(x, w)
    y_comp.backward(g)
    assert torch.equal(y_comp, y_eager)
    assert torch.equal(x.grad, gx) and torch.equal(w.grad, gw)


def test_reference_gelu_mlp_against_bf16() -> None:
    x = torch.randn(256, 128, requires_grad=True)
    w1 = torch.randn(512, 128, requires_grad=True)
    w2 = torch.randn(128, 512, requires_grad=True)
    g = torch.randn(256, 128)
    h = fp8_linear_reference(x, w1, scale=128**-0.5, grad_scale=1.0)
    y = fp8_linear_reference(torch.nn.functional.gelu(h), w2, scale=512**-0.5, grad_scale=1.0)
    y.backward(g)
    xb, w1b, w2b = (t.detach().bfloat16().requires_grad_() for t in (x, w1, w2))
    hb = torch.nn.functional.linear(xb, w1b) * 128**-0.5
    yb = torch.nn.functional.linear(torch.nn.functional.gelu(hb), w2b) * 512**-0.5
    yb.backward(g.bfloat16())
    assert x.grad is not None and xb.grad is not None and w1.grad is not None
    assert rel_err(y, yb) < FWD_VS_BF16 * 1.5  # two FP8 layers in a row
    assert rel_err(x.grad, xb.grad) < GRAD_X_VS_BF16 * 1.5
    assert rel_err(w1.grad, w1b.grad) < GRAD_W_VS_BF16 * 1.5


def test_casts_made_ahead_are_used_and_checked() -> None:
    """``x8``, x's casts from its producer, stand in for the layer's own cast of x: same
    output and weight gradient for the right casts, another output for other bytes (so they
    are read, not recomputed); x still takes the input gradient. Casts of another shape are
    an error."""
    x = torch.randn(3, 5, 64, requires_grad=True)
    w = torch.randn(32, 64, requires_grad=True)
    rows = saturating_cast(x.detach().flatten(0, 1), E4M3)
    x8 = kernels.E4M3Copies(rows, rows.t().contiguous())
    own = fp8_linear_reference(x, w, scale=0.125, grad_scale=1.0)
    own.float().sum().backward()
    grads = x.grad, w.grad
    x.grad = w.grad = None
    given = fp8_linear_reference(x, w, scale=0.125, grad_scale=1.0, x8=x8)
    given.float().sum().backward()
    assert torch.equal(given, own)
    assert torch.equal(x.grad, grads[0]) and torch.equal(w.grad, grads[1])  # type: ignore[arg-type]
    halved = saturating_cast(rows.float() / 2, E4M3)
    other = fp8_linear_reference(x, w, scale=0.125, grad_scale=1.0, x8=x8._replace(rows=halved))
    assert not torch.equal(other, own)
    with pytest.raises(ValueError, match="x8 must be"):
        fp8_linear_reference(x, w, scale=1.0, grad_scale=1.0, x8=kernels.E4M3Copies(rows, rows))
