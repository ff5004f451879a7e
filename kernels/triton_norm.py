"""A µS block's Res-Post-LN, its residual and the next layer's FP8 operands, in one kernel;
its gradients in another.

Each µS sub-layer ends with (``models.gpt.Block``)::

    y = skip * x + branch * LayerNorm(f) * gain      skip = sqrt(1 - tau), branch = sqrt(tau)

(LayerNorm without bias, eps 1e-5), x (M, C) the residual stream (fp32 under the trainer's
bf16 autocast, bf16 possible), f (M, C) the sub-layer's output (bf16), gain (C,) fp32. The
next FP8 linear layer then casts y to e4m3 twice, a row-major (M, C) copy for its forward
GEMM and a transposed (C, M) copy for its weight-gradient GEMM (`kernels.triton_casts.
cast_transpose`): a separate pass over y, and for an fp32 y two (see the workaround there).

Why one kernel: a profile of a whole FP8 training step on an H100 found the GEMMs level
with cuBLAS and the casts' own passes the time that separates our compiled step from
static FP8 through cuBLAS; inductor's own fusion of norm, residual and cast (the traced-casts
experiment) reached only ~55% of the bandwidth, held back by its transposed store.
``_res_post_norm_kernel`` reads x, f and gain once from memory and writes y, e4m3(y)
row-major, e4m3(y) transposed and each row's mean and rstd (what the backward needs).

`models.gpt.Block` runs it on the Triton FP8 path and hands y8, y8t to the next layers
(`kernels.E4M3Copies`, `fp8_linear(x8=)`); `benchmarks/bench_norm.py` measures it alone.

Numerics (those of `res_post_norm_reference`, plain torch in fp32):

* mean and variance in fp32, the variance centred (a second pass over f, not E[f²] - E[f]²,
  which cancels for rows far from zero mean); ``rstd = 1 / sqrt(var + eps)`` with correctly
  rounded square root and divisions, where torch's CUDA kernel uses the approximate rsqrt:
  the two differ by an fp32 ulp or two, inside the tests' 1e-5.
* ``y = skip * x + branch * ((f - mean) * rstd * gain)`` in fp32, stored in x's dtype.
* The FP8 copies are the saturating cast of *the stored y* (for a bf16 x its bf16 rounding,
  as a separate cast of y would see it): ``e4m3(clamp(y, ±448))``, NaN stays NaN.

Each program owns BLOCK_M whole rows and walks C in chunks of BLOCK_C three times: pass 1
sums f for the mean, pass 2 the centred squares, pass 3 normalises and writes everything.
The row block's f (BLOCK_M × C × 2 bytes, ≤ 256 KiB) is meant to stay in L2 between passes,
so that memory sees f once: 12 bytes an element for an fp32 x, 8 for bf16. The tiles are a
fixed table (`norm_config`), not tuned: a tuner would add its timing to a cold trial's
warm-up, and the kernel is memory-bound, so a tile only has to keep the accesses wide and
the grid full.

The backward (``_res_post_norm_backward_kernel``), per row, with n = (f - mean) * rstd from
the forward's statistics and g = branch * dy * gain, all in fp32:

* ``dx = skip * dy``, stored in x's dtype;
* ``df = rstd * (g - mean_C(g) - n * mean_C(g * n))``, stored in f's dtype;
* ``dgain = sum over rows of branch * dy * n``: each program writes the partial sum over
  its rows, one fp32 row of a (programs, C) buffer, which torch then sums: a fixed order, no
  atomics, the same result on every run.

Each program walks a contiguous run of row blocks, each block's rows whole in registers
(`norm_backward_config`), so that memory sees dy and f once and dx and df once: 12 bytes an
element for an fp32 x, 8 for bf16, and C is at most `MAX_WIDTH`. The first form took the
forward's tiles and walked C twice, reading dy and f again for df, its row blocks (three
times the forward's bytes) too large for L2 to keep between the passes: on an H100 at
16384 x 4096 it moved 1.4 TB/s (0.583 ms) where inductor's backward moves 2.6; this form
2.4 (0.329 ms; `benchmarks/results/bench_norm_h100_two_pass_backward.json`, then
`bench_norm_h100.json`). Exact against its formulas on an H100 (triton 3.6) and under
Triton's interpreter.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.formats import E4M3, E5M2, E4M3Copies, saturating_cast
from kernels.triton_casts import _saturate
from kernels.triton_launch import INTERPRET, check_device, fp8_max


@triton.jit
def _res_post_norm_kernel(
    # Pointers: inputs x, f (M, C) and gain (C,), contiguous; outputs y (M, C) in x's dtype,
    # the e4m3 copies as their uint8 codes, (M, C) and (C, M), and mean, rstd (M,) fp32
    x_ptr,
    f_ptr,
    gain_ptr,
    y_ptr,
    y8_ptr,
    y8t_ptr,
    mean_ptr,
    rstd_ptr,
    # Sizes
    M,
    C,
    # The residual's weights and the norm's epsilon
    skip,
    branch,
    eps,
    # Meta-parameters
    FP8_MAX: tl.constexpr,
    CAST: tl.constexpr,  # write y8
    TRANSPOSE: tl.constexpr,  # and y8t, made from y8
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(axis=0)
    # int64: M * C reaches 2**31 at 65536 tokens × 32768 (and so do the transposed C * M)
    offs_m = (pid * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    in_m = offs_m < M
    rows = offs_m[:, None] * C
    cols = tl.arange(0, BLOCK_C).to(tl.int64)

    # Pass 1: the mean. Summed per element across chunks, then across the row: the partial
    # sums stay small, and the order is fixed by the tile, not by the schedule.
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + cols
        mask = in_m[:, None] & (offs_c[None, :] < C)
        acc += tl.load(f_ptr + rows + offs_c[None, :], mask=mask, other=0.0).to(tl.float32)
    # Correctly rounded divisions (a plain fp32 "/" is div.full, 2 ulp): per row, free.
    n = C.to(tl.float32)
    mean = tl.div_rn(tl.sum(acc, axis=1), n)

    # Pass 2: the centred variance, from the row block's f again (in L2 by now).
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + cols
        mask = in_m[:, None] & (offs_c[None, :] < C)
        f = tl.load(f_ptr + rows + offs_c[None, :], mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, f - mean[:, None], 0.0)
        acc += d * d
    rstd = tl.div_rn(1.0, tl.sqrt_rn(tl.div_rn(tl.sum(acc, axis=1), n) + eps))
    tl.store(mean_ptr + offs_m, mean, mask=in_m)
    tl.store(rstd_ptr + offs_m, rstd, mask=in_m)

    # Pass 3: normalise, add the residual, write y and its FP8 copies.
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + cols
        in_c = offs_c < C
        mask = in_m[:, None] & in_c[None, :]
        offs = rows + offs_c[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        f = tl.load(f_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(gain_ptr + offs_c, mask=in_c, other=0.0).to(tl.float32)
        normed = (f - mean[:, None]) * rstd[:, None] * g[None, :]
        y = (skip * x + branch * normed).to(y_ptr.dtype.element_ty)
        tl.store(y_ptr + offs, y, mask=mask)
        if CAST:
            # The cast of the stored y (its bf16 rounding for a bf16 x), as a separate pass
            # over y would see it.
            y8 = _saturate(y.to(tl.float32), FP8_MAX).to(tl.float8e4nv)
            codes = y8.to(tl.uint8, bitcast=True)  # (BLOCK_M, BLOCK_C)
            tl.store(y8_ptr + offs, codes, mask=mask)
            if TRANSPOSE:
                # The transposed copy is y8's tile read back (from L2) after a CTA barrier,
                # not the codes in registers: with triton 3.6 on an H100, a transposed store
                # of a tile computed from an fp32 x wrote ~25% wrong elements whenever the
                # loop body also stored y8 from the same registers (stored first or second,
                # with a barrier between or not, tl.trans of the codes or of y, or at
                # transposed addresses; right when stored alone). Read back, it is right at
                # every shape, at the same speed (benchmarks/norm_store_probe.py).
                tl.debug_barrier()  # y8's stores by every thread of the program are visible
                back = tl.load(y8_ptr + offs, mask=mask, other=0)
                mask_t = in_c[:, None] & in_m[None, :]
                tl.store(
                    y8t_ptr + offs_c[:, None] * M + offs_m[None, :], tl.trans(back), mask=mask_t
                )


def norm_config(C: int) -> dict[str, int]:
    """The fixed tile for rows of width ``C``: BLOCK_M, BLOCK_C and num_warps.

    * BLOCK_M = 32 rows up to C = 2048, 16 above: the transposed store writes BLOCK_M
      contiguous bytes per column (32: one full 32-byte sector), and the grid, M / BLOCK_M
      programs, fills the 132 SMs of an H100 from M = 4096 tokens; above C = 2048 fewer rows
      keep the row block's f (BLOCK_M × C × 2 bytes, 128-256 KiB) small enough that the
      blocks in flight together fit L2 (50 MB) between the three passes.
    * BLOCK_C: 8192 elements a tile (256 × 32 or 512 × 16; the whole row where C is
      smaller), 32 per thread of 8 warps: wide loads and stores, no register spills.
    * Under the interpreter a small fixed tile, so that tests cross chunk and row-block
      boundaries at small shapes.

    Unmeasured: `benchmarks/bench_norm.py` times these against a few alternatives.
    """
    if INTERPRET:
        return {"BLOCK_M": 16, "BLOCK_C": 32, "num_warps": 1}
    block_m = 32 if C <= 2048 else 16
    return {
        "BLOCK_M": block_m,
        "BLOCK_C": min(triton.next_power_of_2(C), 8192 // block_m),
        "num_warps": 8,
    }


def res_post_norm(
    x: torch.Tensor,
    f: torch.Tensor,
    gain: torch.Tensor,
    *,
    skip: float,
    branch: float,
    eps: float = 1e-5,
    rows: bool = True,
    cols: bool = True,
    config: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """``y = skip * x + branch * LayerNorm(f) * gain`` and its e4m3 copies, in one pass.

    ``x`` and ``f`` are 2-D (M, C) and contiguous, ``gain`` (C,). Returns ``(y, y8, y8t,
    mean, rstd)``: y (M, C) in x's dtype; y8 (M, C) and y8t (C, M) the saturating e4m3 casts
    of y, contiguous (None where ``rows`` or ``cols`` is False); mean and rstd (M,) fp32, the
    per-row statistics of f the backward needs. ``config`` (BLOCK_M, BLOCK_C, num_warps)
    replaces `norm_config`'s choice (the benchmark's alternatives, the GPU tests).
    """
    check_device(x, f, gain)
    if x.ndim != 2 or f.shape != x.shape or gain.shape != (x.shape[1],):
        raise ValueError(
            f"res_post_norm takes x, f (M, C) and gain (C,), got {tuple(x.shape)}, "
            f"{tuple(f.shape)} and {tuple(gain.shape)}"
        )
    if not (x.is_contiguous() and f.is_contiguous() and gain.is_contiguous()):
        raise ValueError("res_post_norm takes contiguous x, f and gain")
    M, C = x.shape
    if C == 0:
        raise ValueError("res_post_norm: a LayerNorm over zero features")
    y = torch.empty_like(x)
    # y8t is made from y8 (see the kernel's pass 3): y8 is written wherever y8t is asked for
    y8 = torch.empty((M, C), device=x.device, dtype=E4M3) if rows or cols else None
    y8t = torch.empty((C, M), device=x.device, dtype=E4M3) if cols else None
    mean = torch.empty(M, device=x.device, dtype=torch.float32)
    rstd = torch.empty(M, device=x.device, dtype=torch.float32)
    if M == 0:
        return y, y8 if rows else None, y8t, mean, rstd
    # The kernel stores bytes (see its transposed store); an unused output's pointer is any
    # valid one, never written.
    y8_arg = (y8 if y8 is not None else y).view(torch.uint8)
    y8t_arg = (y8t if y8t is not None else y8_arg).view(torch.uint8)
    meta = dict(config) if config is not None else norm_config(C)
    grid = (triton.cdiv(M, meta["BLOCK_M"]),)
    _res_post_norm_kernel[grid](
        x,
        f,
        gain,
        y,
        y8_arg,
        y8t_arg,
        mean,
        rstd,
        M,
        C,
        skip,
        branch,
        eps,
        FP8_MAX=fp8_max(E4M3),
        CAST=rows or cols,
        TRANSPOSE=cols,
        **meta,
    )
    return y, y8 if rows else None, y8t, mean, rstd


@triton.jit
def _res_post_norm_backward_kernel(
    # Pointers: inputs dy, f (M, C), gain (C,) and the forward's mean, rstd (M,) fp32, all
    # contiguous; outputs dx (M, C) in x's dtype, df (M, C) in f's, and dgain's partial sums,
    # one fp32 row of C per program (programs, C)
    dy_ptr,
    f_ptr,
    gain_ptr,
    mean_ptr,
    rstd_ptr,
    dx_ptr,
    df_ptr,
    df8t_ptr,
    dgain_partial_ptr,
    # Sizes, and the row blocks each program walks
    M,
    C,
    blocks_per_program,
    # The residual's weights, and the factor before df's e5m2 cast
    skip,
    branch,
    grad_scale,
    # Meta-parameters: which gradients to write, and how
    WRITE_DX: tl.constexpr,
    WRITE_DF: tl.constexpr,
    WRITE_DGAIN: tl.constexpr,
    DF_E5M2: tl.constexpr,  # df as its e5m2 cast's codes (after grad_scale), not in f's dtype
    DF_COLS: tl.constexpr,  # and those codes transposed into df8t, (C, M)
    FP8_MAX: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,  # >= C: whole rows
    T_M: tl.constexpr,  # the transposed copy's tile: T_M rows by T_C columns
    T_C: tl.constexpr,
):
    pid = tl.program_id(axis=0)
    cols = tl.arange(0, BLOCK_C).to(tl.int64)
    in_c = cols < C
    width = C.to(tl.float32)
    if WRITE_DF:
        gain = tl.load(gain_ptr + cols, mask=in_c, other=0.0).to(tl.float32)[None, :]
    # dgain's sum over this program's rows, per element of the tile: reduced over the tile's
    # rows once, at the end; the order is fixed by the tile and the program's rows.
    dgain = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    first = pid.to(tl.int64) * blocks_per_program * BLOCK_M
    for b in range(blocks_per_program):
        # int64: M * C reaches 2**31 at 131072 tokens × 16384
        offs_m = first + b * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
        in_m = offs_m < M
        mask = in_m[:, None] & in_c[None, :]
        offs = offs_m[:, None] * C + cols[None, :]
        # Rows past M load dy = 0 and mean = rstd = 0: their n and g are 0, in every sum.
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if WRITE_DX:
            tl.store(dx_ptr + offs, (skip * dy).to(dx_ptr.dtype.element_ty), mask=mask)
        if WRITE_DF or WRITE_DGAIN:
            f = tl.load(f_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            mean = tl.load(mean_ptr + offs_m, mask=in_m, other=0.0)[:, None]
            rstd = tl.load(rstd_ptr + offs_m, mask=in_m, other=0.0)[:, None]
            n = (f - mean) * rstd
            dnormed = branch * dy  # the gradient of LayerNorm(f) * gain
            if WRITE_DGAIN:
                dgain += dnormed * n
            if WRITE_DF:
                g = dnormed * gain  # the gradient of n
                # Correctly rounded divisions, as the forward's
                mean_g = tl.div_rn(tl.sum(g, axis=1), width)[:, None]
                mean_gn = tl.div_rn(tl.sum(g * n, axis=1), width)[:, None]
                # Rounded to f's dtype either way: the e5m2 cast is that of the stored df, as
                # the next layer's own cast of it would be (`triton_casts`: same bits).
                df = (rstd * (g - mean_g - n * mean_gn)).to(f_ptr.dtype.element_ty)
                if DF_E5M2:
                    df8 = _saturate(df.to(tl.float32) * grad_scale, FP8_MAX).to(tl.float8e5)
                    tl.store(df_ptr + offs, df8.to(tl.uint8, bitcast=True), mask=mask)
                else:
                    tl.store(df_ptr + offs, df, mask=mask)
    if WRITE_DGAIN:
        tl.store(dgain_partial_ptr + pid.to(tl.int64) * C + cols, tl.sum(dgain, axis=0), mask=in_c)
    if DF_COLS:
        # The transposed copy, from the codes this program just stored (L2), read back after
        # a CTA barrier as the forward's y8t is (the same triton 3.6 fault stores wrong
        # elements from registers), in tiles of T_M of the program's rows: each column's
        # store is T_M contiguous bytes (the row block alone is 1-4 rows).
        tl.debug_barrier()
        span = blocks_per_program * BLOCK_M
        tile_m = tl.arange(0, T_M).to(tl.int64)
        tile_c = tl.arange(0, T_C).to(tl.int64)
        for r0 in range(0, span, T_M):
            offs_m = first + r0 + tile_m
            in_m = (offs_m < M) & (r0 + tile_m < span)
            for c0 in range(0, C, T_C):
                offs_c = c0 + tile_c
                in_tc = offs_c < C
                back = tl.load(
                    df_ptr + offs_m[:, None] * C + offs_c[None, :],
                    mask=in_m[:, None] & in_tc[None, :],
                    other=0,
                )
                tl.store(
                    df8t_ptr + offs_c[:, None] * M + offs_m[None, :],
                    tl.trans(back),
                    mask=in_tc[:, None] & in_m[None, :],
                )


# The widest rows the fused op takes: its backward holds whole rows in registers, up to 32
# elements a thread at 16 warps (wider, `models.gpt.Block` takes the unfused path).
MAX_WIDTH = 16384
# The backward's grid, at most: enough programs to fill any GPU several times over, few
# enough that dgain's partial sums (one fp32 row of C each) cost memory little beside dy.
BACKWARD_PROGRAMS = 1024


def norm_backward_config(M: int, C: int) -> dict[str, int]:
    """The backward's tile and grid for (M, C): BLOCK_M rows of BLOCK_C >= C elements a
    step, ``blocks_per_program`` steps a program, and num_warps.

    Each program holds whole rows in registers and reads dy and f once: a row is C elements
    and a step's tile about 4096 (BLOCK_M = 4096 / BLOCK_C rows at narrow widths, where one
    row would leave most threads idle), 16 a thread at 8 warps; wider rows take more warps.
    The grid is at most `BACKWARD_PROGRAMS`, by M alone, so that dgain's summation order (and
    its bits) does not depend on the GPU. Under the interpreter small tiles and few blocks a
    program, so that tests cross tile and program boundaries at small shapes.
    """
    if C > MAX_WIDTH:
        raise ValueError(f"res_post_norm_backward holds whole rows: C <= {MAX_WIDTH}, got {C}")
    block_c = triton.next_power_of_2(C)
    if INTERPRET:
        block_m = 2 if block_c <= 32 else 1
        return {"BLOCK_M": block_m, "BLOCK_C": block_c, "num_warps": 1,
                "blocks_per_program": 3}  # fmt: skip
    block_m = max(1, 4096 // block_c)
    blocks = triton.cdiv(M, block_m)
    return {
        "BLOCK_M": block_m,
        "BLOCK_C": block_c,
        "num_warps": min(16, max(4, block_m * block_c // 512)),
        "blocks_per_program": max(1, triton.cdiv(blocks, BACKWARD_PROGRAMS)),
    }


class NormGrads(NamedTuple):
    """What `res_post_norm_backward` returns; a gradient not asked for is None."""

    dx: torch.Tensor | None  # (M, C), x's dtype
    df: torch.Tensor | None  # (M, C): f's dtype, or its e5m2 cast where a grad_scale is given
    df8t: torch.Tensor | None  # (C, M): that cast transposed, where asked for
    dgain: torch.Tensor | None  # (C,), gain's dtype


# The transposed e5m2 copy's tile (rows, columns): 32 rows make each column's store one full
# 32-byte sector. Under the interpreter a small one, crossing the tests' program boundaries.
DF_TRANSPOSE_TILE = (4, 16) if INTERPRET else (32, 128)


def res_post_norm_backward(
    dy: torch.Tensor,
    f: torch.Tensor,
    gain: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    *,
    skip: float,
    branch: float,
    x_dtype: torch.dtype,
    need_x: bool = True,
    need_f: bool = True,
    need_gain: bool = True,
    grad_scale: float | None = None,
    f_cols: bool = False,
    config: dict[str, Any] | None = None,
) -> NormGrads:
    """The gradients of `res_post_norm`'s y, given dy, in one kernel: `NormGrads`.

    ``dy`` and ``f`` (M, C), ``gain`` (C,), and ``mean``, ``rstd`` (M,) the forward's
    statistics of f, all contiguous; C at most `MAX_WIDTH`. dx (M, C) in ``x_dtype``,
    df (M, C) in f's dtype, dgain (C,) in gain's; a gradient whose ``need_*`` is False is
    neither computed nor written (None). dgain is the sum of the programs' partial sums, one
    row each, in torch: a fixed order, no atomics. ``config`` replaces
    `norm_backward_config`'s choice (the GPU tests' alternatives).

    With a ``grad_scale``, df comes as the FP8 linear layer that produced f takes its output
    gradient (`kernels.ops`): ``saturating_cast(df * grad_scale, E5M2)`` of df rounded to f's
    dtype, the same bits as that cast of the stored df, and with ``f_cols`` also transposed
    (``df8t``, (C, M)), without a pass of their own.
    """
    check_device(dy, f, gain, mean, rstd)
    M, C = f.shape
    if dy.shape != f.shape or gain.shape != (C,) or mean.shape != (M,) or rstd.shape != (M,):
        raise ValueError(
            f"res_post_norm_backward takes dy, f (M, C), gain (C,), mean and rstd (M,), got "
            f"{tuple(dy.shape)}, {tuple(f.shape)}, {tuple(gain.shape)}, {tuple(mean.shape)} "
            f"and {tuple(rstd.shape)}"
        )
    if not all(t.is_contiguous() for t in (dy, f, gain, mean, rstd)):
        raise ValueError("res_post_norm_backward takes contiguous dy, f, gain, mean and rstd")
    if f_cols and (grad_scale is None or not need_f):
        raise ValueError("res_post_norm_backward: f_cols (df's e5m2 copy) needs grad_scale")
    meta = dict(config) if config is not None else norm_backward_config(M, C)
    if meta["BLOCK_C"] < C:
        raise ValueError(f"res_post_norm_backward: BLOCK_C {meta['BLOCK_C']} < C = {C}")
    per_program = meta.pop("blocks_per_program")
    programs = triton.cdiv(triton.cdiv(M, meta["BLOCK_M"]), per_program)
    dx = torch.empty((M, C), device=f.device, dtype=x_dtype) if need_x else None
    df = df8t = None
    if need_f:
        df = torch.empty_like(f) if grad_scale is None else f.new_empty((M, C), dtype=E5M2)
    if f_cols:
        df8t = f.new_empty((C, M), dtype=E5M2)
    dgain_partial = (
        torch.empty((programs, C), device=f.device, dtype=torch.float32) if need_gain else None
    )
    if M > 0 and (need_x or need_f or need_gain):
        # An output not written gets any valid pointer (as in res_post_norm); the FP8 copies
        # are stored as their codes (see the transposed store).
        df_arg = df.view(torch.uint8) if df is not None and grad_scale is not None else df
        t_m, t_c = DF_TRANSPOSE_TILE
        _res_post_norm_backward_kernel[(programs,)](
            dy,
            f,
            gain,
            mean,
            rstd,
            dx if dx is not None else dy,
            df_arg if df_arg is not None else dy,
            df8t.view(torch.uint8) if df8t is not None else dy,
            dgain_partial if dgain_partial is not None else dy,
            M,
            C,
            per_program,
            skip,
            branch,
            1.0 if grad_scale is None else grad_scale,
            WRITE_DX=need_x,
            WRITE_DF=need_f,
            WRITE_DGAIN=need_gain,
            DF_E5M2=grad_scale is not None,
            DF_COLS=f_cols,
            FP8_MAX=fp8_max(E5M2),
            T_M=t_m,
            T_C=t_c,
            **meta,
        )
    dgain = dgain_partial.sum(0).to(gain.dtype) if dgain_partial is not None else None
    return NormGrads(dx, df, df8t, dgain)


def res_post_norm_reference(
    x: torch.Tensor,
    f: torch.Tensor,
    gain: torch.Tensor,
    *,
    skip: float,
    branch: float,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The numerical reference, plain torch in fp32: ``(y, y8, y8t)`` as `res_post_norm_fp8`.

    Differentiable in x, f and gain (autograd through torch's own layer_norm): the gradients'
    reference too. y8 and y8t are the saturating casts (`kernels.saturating_cast`) of y as
    stored in x's dtype.
    """
    with torch.autocast(x.device.type, enabled=False):  # fp32 math whatever the caller's
        normed = F.layer_norm(f.float(), (f.shape[-1],), gain.float(), None, eps)
        y = (skip * x.float() + branch * normed).to(x.dtype)
    y8 = saturating_cast(y.detach(), E4M3)
    return y, y8, y8.t().contiguous()


# ---------------------------------------------------------------------------------------------
# The custom op (what torch.compile sees) and the autograd Function
# ---------------------------------------------------------------------------------------------


def _with_both_copies(
    x: torch.Tensor, f: torch.Tensor, gain: torch.Tensor, skip: float, branch: float, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    y, y8, y8t, mean, rstd = res_post_norm(x, f, gain, skip=skip, branch=branch, eps=eps)
    assert y8 is not None and y8t is not None
    return y, y8, y8t, mean, rstd


@torch.library.custom_op("sweeper::res_post_norm", mutates_args=())
def res_post_norm_op(
    x: torch.Tensor, f: torch.Tensor, gain: torch.Tensor, skip: float, branch: float, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`res_post_norm` with both FP8 copies: ``(y, y8, y8t, mean, rstd)``."""
    return _with_both_copies(x, f, gain, skip, branch, eps)


@res_post_norm_op.register_fake
def _(
    x: torch.Tensor, f: torch.Tensor, gain: torch.Tensor, skip: float, branch: float, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    m, c = x.shape
    stats = x.new_empty((m,), dtype=torch.float32)
    return (
        torch.empty_like(x),
        x.new_empty((m, c), dtype=E4M3),
        x.new_empty((c, m), dtype=E4M3),
        stats,
        torch.empty_like(stats),
    )


def _forward(
    x: torch.Tensor, f: torch.Tensor, gain: torch.Tensor, skip: float, branch: float, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # Under torch.compile the custom op; eager calls skip its dispatch (as kernels.ops does).
    if torch.compiler.is_compiling():
        return res_post_norm_op(x, f, gain, skip, branch, eps)
    return _with_both_copies(x, f, gain, skip, branch, eps)


@torch.library.custom_op("sweeper::res_post_norm_backward", mutates_args=())
def res_post_norm_backward_op(
    dy: torch.Tensor,
    f: torch.Tensor,
    gain: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    skip: float,
    branch: float,
    x_dtype: torch.dtype,
    need_x: bool,
    need_f: bool,
    need_gain: bool,
    grad_scale: float | None,
    f_cols: bool,
) -> list[torch.Tensor]:
    """`res_post_norm_backward`: the gradients asked for, in `NormGrads`' order (a custom op
    cannot return None)."""
    grads = res_post_norm_backward(
        dy,
        f,
        gain,
        mean,
        rstd,
        skip=skip,
        branch=branch,
        x_dtype=x_dtype,
        need_x=need_x,
        need_f=need_f,
        need_gain=need_gain,
        grad_scale=grad_scale,
        f_cols=f_cols,
    )
    return [g for g in grads if g is not None]


@res_post_norm_backward_op.register_fake
def _(
    dy: torch.Tensor,
    f: torch.Tensor,
    gain: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    skip: float,
    branch: float,
    x_dtype: torch.dtype,
    need_x: bool,
    need_f: bool,
    need_gain: bool,
    grad_scale: float | None,
    f_cols: bool,
) -> list[torch.Tensor]:
    df_dtype = f.dtype if grad_scale is None else E5M2
    grads = [
        f.new_empty(f.shape, dtype=x_dtype) if need_x else None,
        f.new_empty(f.shape, dtype=df_dtype) if need_f else None,
        f.new_empty(f.shape[::-1], dtype=E5M2) if f_cols else None,
        torch.empty_like(gain) if need_gain else None,
    ]
    return [g for g in grads if g is not None]


def _backward(
    dy: torch.Tensor,
    f: torch.Tensor,
    gain: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    skip: float,
    branch: float,
    x_dtype: torch.dtype,
    needs: tuple[bool, bool, bool],
    grad_scale: float | None = None,
    f_cols: bool = False,
) -> NormGrads:
    """`res_post_norm_backward` (``needs``: x, f, gain): as `_forward`, the custom op under
    torch.compile, the wrapper itself in eager mode."""
    need_x, need_f, need_gain = needs
    if torch.compiler.is_compiling():
        # dx is skip * dy. As torch's op, inductor fuses it into the kernel that reads dx
        # (its sum with the sub-layer's own input gradient), where the kernel would write
        # it for that sum to read back: 8 bytes an element of an fp32 stream saved.
        dx = (dy * skip).to(x_dtype) if need_x else None
        if not (need_f or need_gain):
            return NormGrads(dx, None, None, None)
        grads = iter(
            res_post_norm_backward_op(
                dy, f, gain, mean, rstd, skip, branch, x_dtype, False, need_f, need_gain,
                grad_scale, f_cols,
            )
        )  # fmt: skip
        df, df8t, dgain = (next(grads) if need else None for need in (need_f, f_cols, need_gain))
        return NormGrads(dx, df, df8t, dgain)
    return res_post_norm_backward(
        dy,
        f,
        gain,
        mean,
        rstd,
        skip=skip,
        branch=branch,
        x_dtype=x_dtype,
        need_x=need_x,
        need_f=need_f,
        need_gain=need_gain,
        grad_scale=grad_scale,
        f_cols=f_cols,
    )


def function_forward(
    ctx: Any,
    x: torch.Tensor,
    f2d: torch.Tensor,
    gain: torch.Tensor,
    constants: tuple[float, float, float],
) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]:
    """`res_post_norm` inside an autograd Function's forward (`ResPostNorm`; the ops of the
    projections that end in the norm, `kernels.ops`): ``((y, y8, y8t), what to save)`` for
    x (any shape of rows of C), f2d (M, C) and ``constants`` (skip, branch, eps); y in x's
    shape. Saved: f (its own dtype, bf16: half the bytes of the fp32 copy autocast's
    layer_norm saves), gain, and the kernel's mean and rstd. The copies of y are not
    differentiable, and no zero gradients are made for them (or an unused y)."""
    skip, branch, eps = constants
    y, y8, y8t, mean, rstd = _forward(x.reshape(f2d.shape), f2d, gain, skip, branch, eps)
    ctx.mark_non_differentiable(y8, y8t)
    ctx.set_materialize_grads(False)
    ctx.norm, ctx.norm_x_shape, ctx.norm_x_dtype = (skip, branch), x.shape, x.dtype
    return (y.view(x.shape), y8, y8t), (f2d, gain, mean, rstd)


def function_backward(
    ctx: Any,
    dy: torch.Tensor,
    saved: list[torch.Tensor],
    needs: tuple[bool, bool, bool],
    grad_scale: float | None = None,
    f_cols: bool = False,
) -> NormGrads:
    """`res_post_norm_backward` inside the Function's backward, from `function_forward`'s
    saved tensors: the gradients ``needs`` asks for (x, f, gain), dx in x's shape, df as
    given by ``grad_scale`` and ``f_cols``."""
    f2d, gain, mean, rstd = saved
    skip, branch = ctx.norm
    # .contiguous(): y.sum().backward() hands in an expanded (stride 0) dy.
    dy2d = dy.reshape(f2d.shape).contiguous()
    grads = _backward(
        dy2d, f2d, gain, mean, rstd, skip, branch, ctx.norm_x_dtype, needs, grad_scale, f_cols
    )
    dx = grads.dx.view(ctx.norm_x_shape) if grads.dx is not None else None
    return grads._replace(dx=dx)


class ResPostNorm(torch.autograd.Function):
    """``(y, y8, y8t)`` of `res_post_norm`, differentiable through y only
    (`function_forward`). Backward: `res_post_norm_backward`, one kernel for dx, df and
    dgain's partial sums (only those of the inputs that need a gradient), custom op
    `sweeper::res_post_norm_backward` under torch.compile.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        f: torch.Tensor,
        gain: torch.Tensor,
        skip: float,
        branch: float,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out, saved = function_forward(ctx, x, f, gain, (skip, branch, eps))
        ctx.save_for_backward(*saved)
        return out

    @staticmethod
    def backward(
        ctx: Any, dy: torch.Tensor | None, _dy8: Any, _dy8t: Any
    ) -> tuple[torch.Tensor | None, ...]:
        if dy is None:
            return None, None, None, None, None, None
        needs = tuple(ctx.needs_input_grad[:3])
        grads = function_backward(ctx, dy, ctx.saved_tensors, needs)
        return grads.dx, grads.df, grads.dgain, None, None, None


def res_post_norm_fp8(
    x: torch.Tensor,
    f: torch.Tensor,
    gain: torch.Tensor,
    *,
    skip: float,
    branch: float,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y, e4m3(y), e4m3(y).T)`` of ``y = skip * x + branch * LayerNorm(f) * gain``,
    differentiable in x, f and gain through y (`ResPostNorm`); x, f (M, C), gain (C,)."""
    if torch.is_grad_enabled() and (x.requires_grad or f.requires_grad or gain.requires_grad):
        out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = ResPostNorm.apply(
            x, f, gain, skip, branch, eps
        )
        return out
    y, y8, y8t, _, _ = _forward(x, f, gain, skip, branch, eps)
    return y, y8, y8t


class ResidualNorm(NamedTuple):
    """The µS block's Res-Post-LN that a sub-layer's output f goes into,
    ``skip * x + branch * LayerNorm(f) * gain`` (`models.gpt.Block`): called on f, this
    kernel alone; handed to the op of the projection that makes f
    (`kernels.ops.fp8_linear_norm_triton`, `fp8_gelu_mlp_norm_triton`), inside that op, whose
    backward then takes f's gradient already cast to e5m2 from the norm's backward kernel."""

    x: torch.Tensor  # the residual stream (..., C), contiguous
    gain: torch.Tensor  # (C,)
    skip: float
    branch: float
    eps: float

    def __call__(self, f: torch.Tensor) -> tuple[torch.Tensor, E4M3Copies]:
        """The new residual stream (x's shape and dtype) and its e4m3 casts."""
        shape = self.x.shape
        y, y8, y8t = res_post_norm_fp8(
            self.x.reshape(-1, shape[-1]),
            f.reshape(-1, shape[-1]),
            self.gain,
            skip=self.skip,
            branch=self.branch,
            eps=self.eps,
        )
        return y.view(shape), E4M3Copies(y8, y8t)
