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

from kernels import overlap, triton_casts, triton_gemm, triton_norm
from kernels.formats import E4M3, E5M2, E4M3Copies
from kernels.triton_norm import NormGrads, ResidualNorm

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
    return _both_copies(x, dtype, scale)


@fp8_cast_transpose.register_fake
def _(x: torch.Tensor, dtype: torch.dtype, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    m, n = x.shape
    return x.new_empty((m, n), dtype=dtype), x.new_empty((n, m), dtype=dtype)


@torch.library.custom_op("sweeper::fp8_gelu_cast_transpose", mutates_args=())
def fp8_gelu_cast_transpose(
    x: torch.Tensor, h: torch.Tensor | None, dtype: torch.dtype, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`fp8_cast_transpose` of GELU(x) (h None), or of GELU'(h) * x (the GELU MLP's
    backward: x the gradient of GELU's output)."""
    return _gelu_copies(x, h, dtype, scale)


@fp8_gelu_cast_transpose.register_fake
def _(
    x: torch.Tensor, h: torch.Tensor | None, dtype: torch.dtype, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
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


# What a cast + transpose custom op and its eager wrapper below both run.


def _both_copies(
    x: torch.Tensor,
    dtype: torch.dtype,
    scale: float,
    activation: str = "none",
    h: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    y, yt = triton_casts.cast_transpose(x, dtype, scale, activation=activation, h=h)
    assert y is not None and yt is not None  # both asked for
    return y, yt


def _gelu_copies(
    x: torch.Tensor, h: torch.Tensor | None, dtype: torch.dtype, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return _both_copies(x, dtype, scale, "gelu" if h is None else "gelu_grad", h)


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
    return _both_copies(x, dtype, scale)


def _gelu_cast_transpose(
    x: torch.Tensor, h: torch.Tensor | None, dtype: torch.dtype, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    if torch.compiler.is_compiling():
        return fp8_gelu_cast_transpose(x, h, dtype, scale)
    return _gelu_copies(x, h, dtype, scale)


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
    x is not cast again. Given ``resid``, ``gain`` and ``norm`` (`ResidualNorm`), y goes on
    through the µS block's Res-Post-LN in the same op (`triton_norm.function_forward`), and
    the backward takes y's gradient already cast from the norm's backward kernel
    (`_norm_grads`).
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
        resid: torch.Tensor | None,
        gain: torch.Tensor | None,
        norm: tuple[float, float, float] | None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        need_dgrad, need_wgrad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        x2d = x.reshape(-1, x.shape[-1])  # (M, K)
        side = overlap.side_stream(x.device)
        with overlap.beside(side):  # the weight lives on: nothing to keep for the side
            w8, w8t = _weight_copies(weight, transposed=need_dgrad)  # (N, K), (K, N)
        x8, x8t = _input_copies(x2d, x8_rows, x8_cols, transposed=need_wgrad)  # (M, K), (K, M)
        overlap.join(side, *(t for t in (w8, w8t) if t is not None))
        y = _matmul(x8, w8, scale, torch.bfloat16, PRECISE_ACC["forward"])  # (M, N)
        ctx.wgrad_beside = _wgrad_may_leave(weight, need_wgrad)
        ctx.scale, ctx.grad_scale = scale, grad_scale
        ctx.x_shape, ctx.x_dtype, ctx.w_dtype = x.shape, x.dtype, weight.dtype
        if norm is None:
            ctx.save_for_backward(x8t, w8t)
            return y.reshape(*x.shape[:-1], weight.shape[0])
        assert resid is not None and gain is not None
        out, norm_saved = triton_norm.function_forward(ctx, resid, y, gain, norm)
        ctx.save_for_backward(x8t, w8t, *norm_saved)
        return out

    @staticmethod
    def backward(
        ctx: Any, grad_y: torch.Tensor | None, *_grad_out8: Any
    ) -> tuple[torch.Tensor | None, ...]:
        if grad_y is None:  # only the Res-Post-LN's FP8 copies were used: no gradient
            return (None,) * 9
        x8t, w8t, *norm_saved = ctx.saved_tensors
        need_dgrad, need_wgrad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        # The static grad_scale lifts the gradient out of e5m2's underflow before the cast;
        # scale / grad_scale in the GEMM epilogues removes it again (see kernels.fp8).
        unscale = ctx.scale / ctx.grad_scale
        dresid = dgain = None
        if norm_saved:  # y's gradient comes cast, from the norm's backward kernel
            dresid, g8, g8t, dgain = _norm_grads(
                ctx, grad_y, norm_saved, ctx.needs_input_grad[6:8], need_dgrad, need_wgrad
            )
        else:
            g2d = grad_y.reshape(-1, grad_y.shape[-1])  # (M, N)
            g8, g8t = _grad_copies(g2d, ctx.grad_scale, rows=need_dgrad, cols=need_wgrad)
        grad_x = grad_w = None
        if need_wgrad:
            grad_w = _weight_grad(g8t, x8t, unscale, ctx.w_dtype, beside=ctx.wgrad_beside)
        if need_dgrad:
            assert g8 is not None
            grad_x = _matmul(g8, w8t, unscale, ctx.x_dtype, PRECISE_ACC["dgrad"])  # (M, K)
            grad_x = grad_x.reshape(ctx.x_shape)
        return grad_x, grad_w, None, None, None, None, dresid, dgain, None


class FP8GeluMLPTriton(torch.autograd.Function):
    """The µS GELU MLP, ``down(GELU(up(x)))``, as two FP8 linear layers whose GELU and the
    casts around it run in one cast + transpose of each plain GEMM's bf16 output
    (`triton_casts.cast_transpose(activation=)`): the up projection's output h becomes the
    down projection's e4m3 operands ``e4m3(GELU(h))``, and the down projection's input
    gradient the up projection's e5m2 operands ``e5m2(GELU'(h) * dy)``, rows and transposed,
    without a GELU pass of their own; the GEMMs stay plain (cuBLAS's where it is faster).
    Same numbers as the two `FP8LinearTriton` layers with GELU between them.
    Saved: x's and the weights' transposed e4m3 copies, h in bf16 (for GELU'), and
    GELU(h)'s transposed e4m3 copy. Given ``gain`` and ``norm``, the output goes on through
    the µS block's Res-Post-LN, as in `FP8LinearTriton`, whose residual stream is x itself
    (the block's MLP reads the stream it adds to: one input, its two gradients summed).
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        w_up: torch.Tensor,
        w_down: torch.Tensor,
        up_scale: float,
        down_scale: float,
        grad_scale: float,
        x8_rows: torch.Tensor | None,
        x8_cols: torch.Tensor | None,
        gain: torch.Tensor | None,
        norm: tuple[float, float, float] | None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        needs = ctx.needs_input_grad[:3]  # x, w_up, w_down
        y, saved = _gelu_mlp_forward(
            x, w_up, w_down, (up_scale, down_scale), x8_rows, x8_cols, needs
        )
        ctx.up_beside = _wgrad_may_leave(w_up, needs[1])
        ctx.down_beside = _wgrad_may_leave(w_down, needs[2])
        ctx.scales, ctx.grad_scale = (up_scale, down_scale), grad_scale
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        ctx.w_dtypes = (w_up.dtype, w_down.dtype)
        if norm is None:
            ctx.save_for_backward(*saved)
            return y
        assert gain is not None
        y2d = y.reshape(-1, y.shape[-1])
        out, norm_saved = triton_norm.function_forward(ctx, x, y2d, gain, norm)
        ctx.save_for_backward(*saved, *norm_saved)
        return out

    @staticmethod
    def backward(
        ctx: Any, grad_y: torch.Tensor | None, *_grad_out8: Any
    ) -> tuple[torch.Tensor | None, ...]:
        if grad_y is None:  # only the Res-Post-LN's FP8 copies were used: no gradient
            return (None,) * 10
        x8t, w_up8t, h, act8t, w_down8t, *norm_saved = ctx.saved_tensors
        need_x, need_up, need_down = ctx.needs_input_grad[:3]
        need_dh = need_x or need_up
        up_unscale, down_unscale = (s / ctx.grad_scale for s in ctx.scales)
        dresid = dgain = None
        if norm_saved:  # y's gradient comes cast, from the norm's backward kernel
            needs = (need_x, ctx.needs_input_grad[8])  # x (the residual stream), gain
            dresid, g8, g8t, dgain = _norm_grads(ctx, grad_y, norm_saved, needs, need_dh, need_down)
        else:
            g2d = grad_y.reshape(-1, grad_y.shape[-1])  # (M, d)
            g8, g8t = _grad_copies(g2d, ctx.grad_scale, rows=need_dh, cols=need_down)
        grad_x = grad_up = grad_down = None
        if need_down:
            grad_down = _weight_grad(
                g8t, act8t, down_unscale, ctx.w_dtypes[1], beside=ctx.down_beside
            )
        if need_dh:
            assert g8 is not None
            dact = _matmul(g8, w_down8t, down_unscale, h.dtype, PRECISE_ACC["dgrad"])  # (M, 4d)
            dh8, dh8t = _gelu_cast_transpose(dact, h, E5M2, ctx.grad_scale)
            if need_up:
                grad_up = _weight_grad(dh8t, x8t, up_unscale, ctx.w_dtypes[0], beside=ctx.up_beside)
            if need_x:
                grad_x = _matmul(dh8, w_up8t, up_unscale, ctx.x_dtype, PRECISE_ACC["dgrad"])
                grad_x = grad_x.reshape(ctx.x_shape)
        if dresid is not None:  # x is also the residual stream the norm adds to
            grad_x = dresid if grad_x is None else grad_x + dresid
        return grad_x, grad_up, grad_down, None, None, None, None, None, dgain, None


def _norm_grads(
    ctx: Any,
    grad_out: torch.Tensor,
    saved: list[torch.Tensor],
    needs: tuple[bool, bool],
    rows: bool,
    cols: bool,
) -> NormGrads:
    """The backward of the µS Res-Post-LN inside a projection's op: the gradients of the
    residual stream and the gain where ``needs`` asks for them, and the projection's output
    gradient already as the e5m2 operands its GEMMs read, row-major (``df``, ``rows``) and
    transposed (``df8t``, ``cols``), made by the norm's backward kernel: the bits of a cast
    of the stored bf16 gradient, without that gradient's write and a pass of its own."""
    return triton_norm.function_backward(
        ctx, grad_out, saved, (needs[0], rows or cols, needs[1]), ctx.grad_scale, cols
    )


def _gelu_mlp_forward(
    x: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    scales: tuple[float, float],
    x8_rows: torch.Tensor | None,
    x8_cols: torch.Tensor | None,
    needs: tuple[bool, ...],
) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]:
    """The MLP's output and what its backward reads, for the gradients ``needs`` asks for
    (x, w_up, w_down): x8t, w_up8t, h, act8t, w_down8t (None where not needed)."""
    need_x, need_up, _ = needs
    need_dh = need_x or need_up  # the gradient of GELU's input
    x2d = x.reshape(-1, x.shape[-1])  # (M, d)
    side = overlap.side_stream(x.device)
    with overlap.beside(side):
        w_up8, w_up8t = _weight_copies(w_up, transposed=need_x)  # (4d, d), (d, 4d)
        w_down8, w_down8t = _weight_copies(w_down, transposed=need_dh)  # (d, 4d), (4d, d)
    x8, x8t = _input_copies(x2d, x8_rows, x8_cols, transposed=need_up)
    overlap.join(side, *(t for t in (w_up8, w_up8t, w_down8, w_down8t) if t is not None))
    h = _matmul(x8, w_up8, scales[0], torch.bfloat16, PRECISE_ACC["forward"])  # (M, 4d)
    act8, act8t = _gelu_cast_transpose(h, None, E4M3, 1.0)  # e4m3 GELU(h), (M, 4d), (4d, M)
    y = _matmul(act8, w_down8, scales[1], torch.bfloat16, PRECISE_ACC["forward"])
    return y.reshape(*x.shape[:-1], w_down.shape[0]), (x8t, w_up8t, h, act8t, w_down8t)


def _weight_copies(
    weight: torch.Tensor, *, transposed: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A weight (N, K)'s e4m3 cast and, where the input gradient needs it, its (K, N) copy."""
    if transposed:
        return _cast_transpose(weight, E4M3, 1.0)
    return _cast(weight, E4M3, 1.0), None


def _input_copies(
    x2d: torch.Tensor,
    rows: torch.Tensor | None,
    cols: torch.Tensor | None,
    *,
    transposed: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x (M, K)'s e4m3 cast and, for the weight gradient, its (K, M) copy: the casts made
    ahead where given, else made here."""
    if rows is not None and cols is not None:
        return rows, cols
    if transposed:
        return _cast_transpose(x2d, E4M3, 1.0)
    return _cast(x2d, E4M3, 1.0), None


def _grad_copies(
    g2d: torch.Tensor, grad_scale: float, *, rows: bool, cols: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The output gradient (M, N)'s e5m2 casts after ``grad_scale``: row-major for the input
    gradient, (N, M) for the weight gradient, each only where asked for."""
    if rows and cols:
        return _cast_transpose(g2d, E5M2, grad_scale)
    if rows:
        return _cast(g2d, E5M2, grad_scale), None
    return None, _transpose_cast(g2d, E5M2, grad_scale)


def _wgrad_may_leave(weight: torch.Tensor, need_wgrad: bool) -> bool:
    # The weight gradient may leave the current stream only where autograd will store it as
    # it is, without a kernel of its own (see kernels.overlap).
    return need_wgrad and weight.grad is None


def _weight_grad(
    g8t: torch.Tensor | None,
    x8t: torch.Tensor | None,
    unscale: float,
    dtype: torch.dtype,
    *,
    beside: bool,
) -> torch.Tensor:
    """``g8t @ x8t.T * unscale``, the weight gradient (N, K): beside the input gradient's
    GEMM where it may be (see kernels.overlap), forked once g8t exists, so that the layer
    below waits only for the input gradient."""
    assert g8t is not None and x8t is not None
    side = overlap.side_stream(g8t.device) if beside else None
    with overlap.beside(side, g8t, x8t):
        grad_w = _matmul(g8t, x8t, unscale, dtype, PRECISE_ACC["wgrad"])
    overlap.join_later(side, grad_w)
    return grad_w


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
    if _records_graph(x, weight):
        args = (x, weight, scale, grad_scale, rows, cols)
        out: torch.Tensor = FP8LinearTriton.apply(*args, None, None, None)
        return out
    # No graph to record (evaluation): no transposed copies, nothing saved.
    side = overlap.side_stream(x.device)
    with overlap.beside(side):
        w8, _ = _weight_copies(weight, transposed=False)
    x8_rows, _ = _input_copies(x.reshape(-1, x.shape[-1]), rows, cols, transposed=False)
    overlap.join(side, w8)
    y = _matmul(x8_rows, w8, scale, torch.bfloat16, PRECISE_ACC["forward"])
    return y.reshape(*x.shape[:-1], weight.shape[0])


def fp8_linear_norm_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    scale: float,
    grad_scale: float,
    then: ResidualNorm,
    x8: E4M3Copies | None = None,
) -> tuple[torch.Tensor, E4M3Copies]:
    """`fp8_linear_triton` whose output goes on into the µS block's Res-Post-LN ``then``,
    in one op (`FP8LinearTriton`): the new residual stream and its e4m3 casts,
    the same numbers as ``then(fp8_linear_triton(...))``."""
    rows, cols = x8 if x8 is not None else (None, None)
    if _records_graph(x, weight, then.x, then.gain):
        args = (x, weight, scale, grad_scale, rows, cols)
        y, y8, y8t = FP8LinearTriton.apply(*args, then.x, then.gain, _constants(then))
        return y, E4M3Copies(y8, y8t)
    return then(fp8_linear_triton(x, weight, scale=scale, grad_scale=grad_scale, x8=x8))


def fp8_gelu_mlp_triton(
    x: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    *,
    scales: tuple[float, float],
    grad_scale: float,
    x8: E4M3Copies | None = None,
) -> torch.Tensor:
    """The Triton FP8 GELU MLP; `kernels.fp8_gelu_mlp` dispatches here on CUDA."""
    rows, cols = x8 if x8 is not None else (None, None)
    if _records_graph(x, w_up, w_down):
        args = (x, w_up, w_down, *scales, grad_scale, rows, cols)
        out: torch.Tensor = FP8GeluMLPTriton.apply(*args, None, None)
        return out
    # No graph to record (evaluation): the same kernels, no transposed weight copies.
    y, _ = _gelu_mlp_forward(x, w_up, w_down, scales, rows, cols, (False, False, False))
    return y


def fp8_gelu_mlp_norm_triton(
    x: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    *,
    scales: tuple[float, float],
    grad_scale: float,
    then: ResidualNorm,
    x8: E4M3Copies | None = None,
) -> tuple[torch.Tensor, E4M3Copies]:
    """`fp8_gelu_mlp_triton` whose output goes on into the µS block's Res-Post-LN ``then``,
    in one op, as `fp8_linear_norm_triton`; ``then.x`` is x itself, the residual stream the
    block's MLP reads."""
    if then.x is not x:
        raise ValueError("fp8_gelu_mlp_norm_triton: the norm's residual stream is the MLP's x")
    rows, cols = x8 if x8 is not None else (None, None)
    if _records_graph(x, w_up, w_down, then.gain):
        args = (x, w_up, w_down, *scales, grad_scale, rows, cols)
        y, y8, y8t = FP8GeluMLPTriton.apply(*args, then.gain, _constants(then))
        return y, E4M3Copies(y8, y8t)
    y = fp8_gelu_mlp_triton(x, w_up, w_down, scales=scales, grad_scale=grad_scale, x8=x8)
    return then(y)


def _constants(then: ResidualNorm) -> tuple[float, float, float]:
    return then.skip, then.branch, then.eps


def _records_graph(*inputs: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in inputs)


def best_configs() -> dict[str, dict[str, dict[str, Any]]]:
    """The tuned choice per key in this process, for benchmark reports: the kernels' tiles
    and, per GEMM shape, the library (ours or cuBLAS)."""
    return {tuner.name: tuner.chosen() for tuner in (*TUNERS, triton_gemm.GEMM_LIBRARY)}
