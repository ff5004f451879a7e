"""The Triton kernels on CPU, under Triton's interpreter (``TRITON_INTERPRET=1``).

Not collected by pytest's default pattern: `test_fp8_interpreter.py` runs this file in a
subprocess with the variable set, because it must be set before Triton is first imported and
the other tests of the session import Triton without it.

What the interpreter gets wrong, measured with triton 3.9 (so the checks avoid it):
* fp32 -> FP8 rounds ties away from zero (torch and the GPU round to nearest even), and
  mis-rounds when the rounding carries into the next binade. The cast checks therefore feed
  values that are exact in the target format (or saturate), where no rounding happens.
* fp32 -> bf16 truncates. GEMMs are checked with fp32 outputs exactly, bf16 outputs within
  one bf16 unit (2^-7 relative) of the exact result.
* NaN becomes a number in the FP8 cast, so NaN propagation is checked on GPU only.
What is checked here is the kernels' logic: indexing, masks, transposes, strides, the
static scales, saturation, the two GEMM variants and the autograd wiring of fp8_linear; and
the fused AdamW step against `CompressedAdamW`'s torch path (its FP8 and bf16 stores are
exact values on the grid, so the cast's rounding plays no part).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run by test_fp8_interpreter.py with TRITON_INTERPRET=1", allow_module_level=True)

import triton
import triton.language as tl
from adam_helpers import compare_fused_steps

import kernels
from kernels import (
    E4M3,
    E5M2,
    fp8_linear_reference,
    saturating_cast,
    triton_adam,
    triton_casts,
    triton_gemm,
)
from models.compressed_adam import MomentPrecision, hashed_uniform


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def representable(shape: tuple[int, ...], dtype: torch.dtype, source: torch.dtype) -> torch.Tensor:
    """Random values exact in both FP8 ``dtype`` and ``source``, with saturating extremes."""
    x = (torch.randn(shape) * 8).to(E5M2).to(E4M3)  # exact in e5m2 and e4m3 (normal range)
    x = x.float().to(dtype).float()
    x.view(-1)[:2] = torch.tensor([1e6, -1e6])  # out of range: must saturate
    return x.to(source)


@pytest.mark.parametrize("dtype", [E4M3, E5M2])
@pytest.mark.parametrize("source", [torch.float32, torch.bfloat16])
def test_saturating_cast_kernel(dtype: torch.dtype, source: torch.dtype) -> None:
    x = representable((37, 53), dtype, source)
    y = triton_casts.saturating_cast(x, dtype, scale=4.0)
    assert torch.equal(
        y.view(torch.uint8), saturating_cast(x.float() * 4.0, dtype).view(torch.uint8)
    )


@pytest.mark.parametrize("dtype", [E4M3, E5M2])
@pytest.mark.parametrize("transposed_input", [False, True])
@pytest.mark.parametrize("source", [torch.bfloat16, torch.float32])  # fp32: yt read back
def test_cast_transpose_kernel(
    dtype: torch.dtype, transposed_input: bool, source: torch.dtype
) -> None:
    x = representable((45, 70), dtype, source)
    if transposed_input:  # a strided view: the kernel reads strides, no copy
        x = x.t()
    ref = saturating_cast(x.float() * 2.0, dtype)  # x2 keeps e4m3 values exact
    y, yt = triton_casts.cast_transpose(x, dtype, scale=2.0)
    assert y is not None and yt is not None
    assert torch.equal(y.view(torch.uint8), ref.view(torch.uint8))
    assert torch.equal(yt.view(torch.uint8), ref.t().contiguous().view(torch.uint8))
    y_only, none = triton_casts.cast_transpose(x, dtype, scale=2.0, cols=False)
    none2, yt_only = triton_casts.cast_transpose(x, dtype, scale=2.0, rows=False)
    assert none is None and none2 is None and y_only is not None and yt_only is not None
    assert torch.equal(y_only.view(torch.uint8), y.view(torch.uint8))
    assert torch.equal(yt_only.view(torch.uint8), yt.view(torch.uint8))


def fp8_operands(m: int, n: int, k: int, a_dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    a = torch.randn(m, k).to(a_dtype)
    b = torch.randn(n, k).to(E4M3)
    exact = a.double() @ b.double().T
    return a, b, exact


@pytest.mark.parametrize("kernel", ["simple", "tma"])
@pytest.mark.parametrize("a_dtype", [E4M3, E5M2])
def test_fp8_matmul_fp32_out(kernel: str, a_dtype: torch.dtype) -> None:
    # Odd sizes: partial tiles in M, N and K (TMA needs K % 16 == 0, so K = 80 there).
    m, n, k = (37, 45, 50) if kernel == "simple" else (37, 44, 80)
    a, b, exact = fp8_operands(m, n, k, a_dtype)
    out = torch.full((m, n), float("nan"))  # poisoned: every element must be written
    triton_gemm.fp8_matmul(a, b, scale=0.25, out_dtype=torch.float32, out=out, kernel=kernel)
    # FP8 products are exact in fp32; only the fp32 summation order differs.
    assert ((out.double() - exact * 0.25).abs() <= 1e-6 * (exact.abs() * 0.25 + 1)).all()


@pytest.mark.parametrize("kernel", ["simple", "tma"])
def test_fp8_matmul_bf16_out(kernel: str) -> None:
    a, b, exact = fp8_operands(40, 48, 64, E4M3)
    out = triton_gemm.fp8_matmul(a, b, scale=0.125, out_dtype=torch.bfloat16, kernel=kernel)
    assert out.dtype == torch.bfloat16
    expected = exact * 0.125
    assert ((out.double() - expected).abs() <= 2.0**-7 * expected.abs() + 1e-6).all()


def test_fp8_matmul_checks_its_arguments() -> None:
    a = torch.randn(8, 32).to(E5M2)
    with pytest.raises(ValueError, match="e5m2 x e5m2"):
        triton_gemm.fp8_matmul(a, a)
    with pytest.raises(ValueError, match="FP8"):
        triton_gemm.fp8_matmul(torch.randn(8, 32), torch.randn(8, 32).to(E4M3))
    with pytest.raises(ValueError, match="16-byte"):
        triton_gemm.fp8_matmul(
            torch.randn(8, 40).to(E4M3), torch.randn(8, 40).to(E4M3), kernel="tma"
        )


def small_integers(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Values in {-2, ..., 2}: their GEMMs' sums are integers, exact in bf16 (no rounding,
    so the interpreter's truncation plays no part in h)."""
    return torch.randint(-2, 3, shape).float().to(dtype)


def assert_fp8_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """FP8 values from a GELU cast against torch's: most codes equal, the rest within
    a binade. GELU's outputs land anywhere, so the interpreter's rounding quirks (module
    docstring: bf16 truncation, FP8 ties and carries) move some codes by one step, and its
    carry bug by a binade; an indexing, scale or formula error moves most of them."""
    got, want = got.float(), want.float()
    assert (got == want).float().mean() > 0.85
    assert ((got - want).abs() <= want.abs() / 2 + 2.0**-9).all()
    assert (got * want >= 0).all()  # no sign flipped


@pytest.mark.parametrize("source", [torch.bfloat16, torch.float32])
def test_gelu_casts(source: torch.dtype) -> None:
    """`cast_transpose` with the GELU MLP's activations against torch's GELU (and its
    backward) on the same tensors, then the cast (assert_fp8_close); yt exactly y's
    transpose."""
    h = (torch.randn(45, 70) * 2).to(source)
    y, yt = triton_casts.cast_transpose(h, E4M3, activation="gelu")
    assert y is not None and yt is not None
    want = saturating_cast(F.gelu(h).to(torch.bfloat16).float(), E4M3)
    assert_fp8_close(y, want)
    assert torch.equal(yt.view(torch.uint8), y.t().contiguous().view(torch.uint8))

    h16 = h.to(torch.bfloat16)
    dy = (torch.randn(45, 70) / 64).to(torch.bfloat16)
    g, gt = triton_casts.cast_transpose(dy, E5M2, 64.0, activation="gelu_grad", h=h16)
    assert g is not None and gt is not None
    h_ = h16.clone().requires_grad_()
    F.gelu(h_).backward(dy)
    assert h_.grad is not None
    assert_fp8_close(g, saturating_cast(h_.grad.float() * 64.0, E5M2))
    assert torch.equal(gt.view(torch.uint8), g.t().contiguous().view(torch.uint8))
    with pytest.raises(ValueError, match="h \\(GELU's input\\)"):
        triton_casts.cast_transpose(dy, E5M2, activation="gelu_grad")


def test_fp8_gelu_mlp_triton_path_matches_emulation() -> None:
    """The fused MLP (`FP8GeluMLPTriton`, GELU in the casts) against the two emulated layers
    with GELU between: output and all three gradients, eager and compiled (aot_eager: the
    custom ops' fake forms traced, without graph breaks)."""
    d = 32
    x0 = small_integers((2, 24, d), torch.float32)
    w_up0, w_down0 = small_integers((4 * d, d), torch.float32), torch.randn(d, 4 * d)
    scales, grad_scale = (d**-0.5, (4 * d) ** -0.5), 256.0
    g = ((torch.randn(2, 24, d) * 4).to(E5M2).float() / grad_scale).to(torch.bfloat16)

    def mlp(x: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
        return kernels.fp8_gelu_mlp(x, w_up, w_down, scales=scales, grad_scale=grad_scale)

    results = []
    for backend, run in (
        ("triton", mlp),
        ("triton", torch.compile(mlp, backend="aot_eager", fullgraph=True)),
        ("emulate", mlp),
    ):
        kernels.set_fp8_backend(backend)
        try:
            x = x0.to(torch.bfloat16).requires_grad_()
            w_up, w_down = w_up0.clone().requires_grad_(), w_down0.clone().requires_grad_()
            y = run(x, w_up, w_down)
            y.backward(g)
            results.append((y, x.grad, w_up.grad, w_down.grad))
        finally:
            kernels.set_fp8_backend("auto")
    eager, compiled, reference = results
    for got, want in zip(eager, compiled, strict=True):
        assert got is not None and want is not None and torch.equal(got, want)

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a.double() - b.double()).norm() / b.double().norm()).item()

    # Within what the interpreter's rounding of GELU's FP8 copies moves (assert_fp8_close):
    # a wrong operand, scale or gradient is off by far more.
    for got, want in zip(eager, reference, strict=True):
        assert got is not None and want is not None and got.dtype == want.dtype
        assert rel(got, want) < 0.15
    with torch.no_grad():  # evaluation: the same kernels, nothing saved
        kernels.set_fp8_backend("triton")
        try:
            y_eval = mlp(x0.to(torch.bfloat16), w_up0, w_down0)
        finally:
            kernels.set_fp8_backend("auto")
    assert torch.equal(y_eval, eager[0])


def test_fp8_linear_triton_path_matches_emulation() -> None:
    """Forward and both gradients through the custom ops and the autograd Function."""
    # Operands exact in e4m3 (and the gradient in e5m2 after grad_scale), so that the
    # interpreter's cast rounding plays no part; no saturating values, which would dominate
    # the norms.
    x0 = (torch.randn(2, 24, 64) * 2).to(E4M3).float()
    w0 = (torch.randn(48, 64) * 2).to(E4M3).float()
    scale, grad_scale = 64**-0.5, 256.0
    g = ((torch.randn(2, 24, 48) * 4).to(E5M2).float() / grad_scale).to(torch.bfloat16)

    results = []
    for backend in ("triton", "emulate"):
        kernels.set_fp8_backend(backend)
        try:
            x = x0.to(torch.bfloat16).requires_grad_()
            w = w0.clone().requires_grad_()
            y = kernels.fp8_linear(x, w, scale=scale, grad_scale=grad_scale)
            y.backward(g)
            results.append((y, x.grad, w.grad))
        finally:
            kernels.set_fp8_backend("auto")
    (y, gx, gw), (y_ref, gx_ref, gw_ref) = results
    assert y.dtype == y_ref.dtype == torch.bfloat16 and gx.dtype == torch.bfloat16
    assert gw.dtype == torch.float32

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a.double() - b.double()).norm() / b.double().norm()).item()

    # bf16 outputs: within the interpreter's truncation (2^-8 RMS at most); fp32 wgrad: exact
    # up to summation order.
    assert rel(y, y_ref) < 2.0**-7
    assert rel(gx, gx_ref) < 2.0**-7
    assert rel(gw, gw_ref) < 1e-6
    with torch.no_grad():  # the no-grad path: no transposed copies
        kernels.set_fp8_backend("triton")
        try:
            y_eval = kernels.fp8_linear(x0.to(torch.bfloat16), w0, scale=scale, grad_scale=1.0)
        finally:
            kernels.set_fp8_backend("auto")
    assert rel(y_eval, fp8_linear_reference(x0, w0, scale=scale, grad_scale=1.0)) < 2.0**-7


def test_fp8_linear_triton_path_compiles() -> None:
    """dynamo traces the Triton path through the custom ops (their fake implementations),
    without graph breaks; aot_eager then runs the ops as eager would."""
    x = torch.randn(2, 16, 64, requires_grad=True)
    w1 = torch.randn(128, 64, requires_grad=True)
    w2 = torch.randn(64, 128, requires_grad=True)

    def block(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        h = kernels.fp8_linear(x, w1, scale=0.125, grad_scale=64.0)
        return kernels.fp8_linear(F.gelu(h), w2, scale=128**-0.5, grad_scale=64.0)

    kernels.set_fp8_backend("triton")
    try:
        y = block(x, w1, w2)
        y.sum().backward()
        grads = [p.grad.clone() for p in (x, w1, w2) if p.grad is not None]
        for p in (x, w1, w2):
            p.grad = None
        y_c = torch.compile(block, backend="aot_eager", fullgraph=True)(x, w1, w2)
        y_c.sum().backward()
    finally:
        kernels.set_fp8_backend("auto")
    assert torch.equal(y_c, y)
    for p, grad in zip((x, w1, w2), grads, strict=True):
        assert p.grad is not None and torch.equal(p.grad, grad)


def test_custom_ops_pass_opcheck() -> None:
    """Fake (meta) implementations, autograd registration and AOT dispatch of the custom ops
    that torch.compile sees. (opcheck's schema test multiplies the inputs, which FP8 tensors
    do not support: fp8_matmul skips it.)"""
    from kernels import ops

    x = torch.randn(64, 96, dtype=torch.bfloat16)
    a = saturating_cast(torch.randn(64, 96), E5M2)
    b = saturating_cast(torch.randn(32, 96), E4M3)
    utils = ("test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic")
    for op in (ops.fp8_cast, ops.fp8_cast_transpose, ops.fp8_transpose_cast):
        torch.library.opcheck(op, (x, E5M2, 2.0), test_utils=(*utils, "test_schema"))
    torch.library.opcheck(ops.fp8_matmul, (a, b, 0.5, torch.float32, False), test_utils=utils)
    h = torch.randn(64, 32, dtype=torch.bfloat16)
    dy = torch.randn(64, 32, dtype=torch.bfloat16)
    for h_arg in (None, h):
        args = (dy, h_arg, E4M3 if h_arg is None else E5M2, 2.0)
        torch.library.opcheck(ops.fp8_gelu_cast_transpose, args, test_utils=utils)


@triton.jit
def _hashed_uniform_kernel(out_ptr, step_ptr, salt, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    noise = triton_adam.hashed_uniform(offs, tl.load(step_ptr), salt)
    tl.store(out_ptr + offs, noise, mask=offs < n)


@pytest.mark.parametrize(("step", "salt"), [(1.0, 0), (12345.0, 7), (2.0**24, 2**20 + 1)])
def test_adam_noise_is_hashed_uniforms(step: float, salt: int) -> None:
    out, n = torch.empty(1000), 1000
    steps = torch.tensor(step)
    _hashed_uniform_kernel[(triton.cdiv(n, 256),)](out, steps, salt, n, BLOCK=256)
    assert torch.equal(out, hashed_uniform(n, steps, salt, out.device))


@pytest.mark.parametrize("precision", ["fp8", "bf16"])
def test_fused_adam_step_matches_the_torch_path(precision: MomentPrecision) -> None:
    # numel not a multiple of 128 (partial last blocks), a 1-d and a 0-d parameter; the
    # tolerances are adam_helpers'. The interpreter computes in numpy without FMA: its codes
    # have matched the torch path's exactly (no flips).
    shapes = [(37, 53), (300,), (), (3, 130)]
    compare_fused_steps(shapes, precision, "cpu", max_flips=0.0)
