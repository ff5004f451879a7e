"""The Triton FP8 kernels as torch custom ops, and the autograd Function that uses them.

Custom ops (``torch.library.custom_op``) make each kernel one opaque node for
``torch.compile``: dynamo traces the autograd Function around them, inductor compiles what
surrounds them (norms, residuals), and the kernels themselves run as written, with their
own autotuning and TMA descriptors, whatever the torch and Triton versions. Eager code calls
the launch wrappers directly, which skips the custom-op dispatch (tens of microseconds a
call, paid per kernel).

Numerics are those of `kernels.fp8` (the emulation): same saturating casts, FP8 products
accumulated in fp32, the static scale applied to the fp32 sum, one rounding to the output
dtype. Only the order of the fp32 additions differs.
"""

from __future__ import annotations

from typing import Any

import torch

from kernels import overlap, triton_casts, triton_gemm
from kernels.formats import E4M3, E5M2, E4M3Copies

# The tuners whose choices a run of this layer makes (the GEMM library choice aside: its
# timing runs the TMA kernel's own tuning, which would then count twice).
TUNERS = (triton_casts.CAST_TRANSPOSE, triton_gemm.FP8_MATMUL_SIMPLE, triton_gemm.FP8_MATMUL_TMA)

# Whether each GEMM promotes the tensor cores' partial sums to fp32 every BLOCK_K products
# (see triton_gemm._mma). Measured on an H100 (benchmarks/results/gemm.json): promotion costs
# about 20% of the throughput and moves the fp32 weight gradient's error from 2.7e-3 to
# 1.0e-4, far below the e5m2 rounding of the gradient itself (about 8%). Off, as cuBLAS's
# fast accumulation.
PRECISE_ACC = {"forward": False, "dgrad": False, "wgrad": False}


# ---------------------------------------------------------------------------------------------
# Custom ops (what torch.compile sees)
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("sweeper::fp8_cast", mutates_args=())
def fp8_cast(x: torch.Tensor, dtype: torch.dtype, scale: float) -> torch.Tensor:
    """Saturating cast ``fp8(clamp(x * scale))``, same shape, contiguous."""
    return triton_casts.saturating_cast(x, dtype, scale)


@fp8_cast.register_fake
def _(x: torch.Tensor, dtype: torch.dtype, scale: float) -> torch.Tensor:
    return torch.empty(x.shape, device=x.device, dtype=dtype)


@torch.library.custom_op("sweeper::fp8_cast_transpose", mutates_args=())
def fp8_cast_transpose(
    x: torch.Tensor, dtype: torch.dtype, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Saturating cast of a 2-D ``x`` (M, N) as a row-major (M, N) and a (N, M) copy."""
    y, yt = triton_casts.cast_transpose(x, dtype, scale)
    assert y is not None and yt is not None
    return y, yt


@fp8_cast_transpose.register_fake
def _(x: torch.Tensor, dtype: torch.dtype, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    m, n = x.shape
    return x.new_empty((m, n), dtype=dtype), x.new_empty((n, m), dtype=dtype)


@torch.library.custom_op("sweeper::fp8_transpose_cast", mutates_args=())
def fp8_transpose_cast(x: torch.Tensor, dtype: torch.dtype, scale: float) -> torch.Tensor:
    """Saturating cast of a 2-D ``x`` (M, N) written transposed, (N, M) contiguous."""
    _, yt = triton_casts.cast_transpose(x, dtype, scale, rows=False)
    assert yt is not None
    return yt


@fp8_transpose_cast.register_fake
def _(x: torch.Tensor, dtype: torch.dtype, scale: float) -> torch.Tensor:
    m, n = x.shape
    return x.new_empty((n, m), dtype=dtype)


@torch.library.custom_op("sweeper::fp8_matmul", mutates_args=())
def fp8_matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    scale: float,
    out_dtype: torch.dtype,
    precise_acc: bool,
) -> torch.Tensor:
    """``(a @ b.T) * scale`` of FP8 ``a`` (M, K), ``b`` (N, K)."""
    return triton_gemm.fp8_matmul(a, b, scale=scale, out_dtype=out_dtype, precise_acc=precise_acc)


@fp8_matmul.register_fake
def _(
    a: torch.Tensor,
    b: torch.Tensor,
    scale: float,
    out_dtype: torch.dtype,
    precise_acc: bool,
) -> torch.Tensor:
    return a.new_empty((a.shape[0], b.shape[0]), dtype=out_dtype)


# Under torch.compile the custom ops; in eager mode the wrappers themselves.


def _cast(x: torch.Tensor, dtype: torch.dtype, scale: float) -> torch.Tensor:
    if torch.compiler.is_compiling():
        return fp8_cast(x, dtype, scale)
    return triton_casts.saturating_cast(x, dtype, scale)


def _cast_transpose(
    x: torch.Tensor, dtype: torch.dtype, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    if torch.compiler.is_compiling():
        return fp8_cast_transpose(x, dtype, scale)
    y, yt = triton_casts.cast_transpose(x, dtype, scale)
    assert y is not None and yt is not None
    return y, yt


def _transpose_cast(x: torch.Tensor, dtype: torch.dtype, scale: float) -> torch.Tensor:
    if torch.compiler.is_compiling():
        return fp8_transpose_cast(x, dtype, scale)
    _, yt = triton_casts.cast_transpose(x, dtype, scale, rows=False)
    assert yt is not None
    return yt


def _matmul(
    a: torch.Tensor, b: torch.Tensor, scale: float, out_dtype: torch.dtype, precise_acc: bool
) -> torch.Tensor:
    if torch.compiler.is_compiling():
        return fp8_matmul(a, b, scale, out_dtype, precise_acc)
    return triton_gemm.fp8_matmul(a, b, scale=scale, out_dtype=out_dtype, precise_acc=precise_acc)


# ---------------------------------------------------------------------------------------------
# The FP8 linear layer on the Triton kernels
# ---------------------------------------------------------------------------------------------


class FP8LinearTriton(torch.autograd.Function):
    """``y = (e4m3(x) @ e4m3(w).T) * scale`` in bf16, e5m2 gradients; see `kernels.fp8`.

    Forward writes, next to the row-major FP8 operands of its GEMM, the transposed copies
    that the backward GEMMs need (x for the weight gradient, w for the input gradient), in
    the same pass over x and w. They are what is saved: one byte per element. Given
    ``x8_rows`` and ``x8_cols`` (x's casts, made by the kernel that wrote x: `E4M3Copies`),
    x is not cast again.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        scale: float,
        grad_scale: float,
        x8_rows: torch.Tensor | None,
        x8_cols: torch.Tensor | None,
    ) -> torch.Tensor:
        need_dgrad, need_wgrad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        x2d = x.reshape(-1, x.shape[-1])  # (M, K)
        x8t = w8t = None
        side = overlap.side_stream(x.device)
        with overlap.beside(side):  # the weight lives on: nothing to keep for the side
            if need_dgrad:
                w8, w8t = _cast_transpose(weight, E4M3, 1.0)  # (N, K), (K, N)
            else:
                w8 = _cast(weight, E4M3, 1.0)
        if x8_rows is not None and x8_cols is not None:
            x8, x8t = x8_rows, x8_cols
        elif need_wgrad:
            x8, x8t = _cast_transpose(x2d, E4M3, 1.0)  # (M, K), (K, M)
        else:
            x8 = _cast(x2d, E4M3, 1.0)
        overlap.join(side, *(t for t in (w8, w8t) if t is not None))
        y = _matmul(x8, w8, scale, torch.bfloat16, PRECISE_ACC["forward"])  # (M, N)
        ctx.save_for_backward(x8t, w8t)
        # The weight gradient may leave the current stream only where autograd will store
        # it as it is, without a kernel of its own (see kernels.overlap).
        ctx.wgrad_beside = need_wgrad and weight.grad is None
        ctx.scale, ctx.grad_scale = scale, grad_scale
        ctx.x_shape, ctx.x_dtype, ctx.w_dtype = x.shape, x.dtype, weight.dtype
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x8t, w8t = ctx.saved_tensors
        need_dgrad, need_wgrad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g2d = grad_y.reshape(-1, grad_y.shape[-1])  # (M, N)
        # The static grad_scale lifts the gradient out of e5m2's underflow before the cast;
        # scale / grad_scale in the GEMM epilogues removes it again (see kernels.fp8).
        unscale = ctx.scale / ctx.grad_scale
        grad_x = grad_w = None
        if need_dgrad and need_wgrad:
            g8, g8t = _cast_transpose(g2d, E5M2, ctx.grad_scale)  # (M, N), (N, M)
        elif need_dgrad:
            g8, g8t = _cast(g2d, E5M2, ctx.grad_scale), None
        else:
            g8, g8t = None, _transpose_cast(g2d, E5M2, ctx.grad_scale)
        if need_wgrad:
            assert g8t is not None
            # Beside the input gradient's GEMM where it may be (see kernels.overlap): forked
            # once g8t exists, it runs while the layer below waits only for grad_x.
            side = overlap.side_stream(g2d.device) if ctx.wgrad_beside else None
            with overlap.beside(side, g8t, x8t):
                grad_w = _matmul(g8t, x8t, unscale, ctx.w_dtype, PRECISE_ACC["wgrad"])  # (N, K)
            overlap.join_later(side, grad_w)
        if need_dgrad:
            assert g8 is not None
            grad_x = _matmul(g8, w8t, unscale, ctx.x_dtype, PRECISE_ACC["dgrad"])  # (M, K)
            grad_x = grad_x.reshape(ctx.x_shape)
        return grad_x, grad_w, None, None, None, None


def fp8_linear_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    scale: float,
    grad_scale: float,
    x8: E4M3Copies | None = None,
) -> torch.Tensor:
    """The Triton FP8 linear layer; `kernels.fp8_linear` dispatches here on CUDA."""
    rows, cols = x8 if x8 is not None else (None, None)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        out: torch.Tensor = FP8LinearTriton.apply(x, weight, scale, grad_scale, rows, cols)
        return out
    # No graph to record (evaluation): no transposed copies, nothing saved.
    side = overlap.side_stream(x.device)
    with overlap.beside(side):
        w8 = _cast(weight, E4M3, 1.0)
    x8_rows = rows if rows is not None else _cast(x.reshape(-1, x.shape[-1]), E4M3, 1.0)
    overlap.join(side, w8)
    y = _matmul(x8_rows, w8, scale, torch.bfloat16, PRECISE_ACC["forward"])
    return y.reshape(*x.shape[:-1], weight.shape[0])


def best_configs() -> dict[str, dict[str, dict[str, Any]]]:
    """The tuned choice per key in this process, for benchmark reports."""
    return {tuner.name: tuner.chosen() for tuner in TUNERS}
