"""Triton kernels of the µS FP8 casts: saturating cast, and cast+transpose in one pass.

Under µS no operand needs a dynamic scale, so a cast is one read and one write, no amax:

* ``saturating_cast_kernel``: ``fp8(clamp(x * scale, ±max))`` over a flat tensor.
* ``_cast_transpose_kernel``: the same cast over a 2-D tile, written row-major *and*
  transposed in one pass. Hopper's FP8 tensor cores take both operands K-major only, so each
  backward GEMM needs one operand transposed; producing it while the tile is in registers
  costs one extra 1-byte write instead of a second pass over the 2- or 4-byte input.
  With an ``ACTIVATION`` it casts the GELU MLP's GELU(x), or GELU'(h)·x in the backward, so
  that the tensor between the MLP's layers needs no pass of its own.

`saturating_cast` and `cast_transpose` check, allocate and launch; the cast+transpose tiles
are chosen per shape by the `CAST_TRANSPOSE` tuner (`kernels.triton_launch.launch_tuned`).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from kernels.formats import E4M3, E5M2
from kernels.triton_launch import INTERPRET, check_device, fp8_max, launch_tuned
from kernels.tuning import Tuner

# Triton's names of the FP8 formats, for the codes a kernel stores as bytes
_TRITON_FP8 = {E4M3: tl.float8e4nv, E5M2: tl.float8e5}


@triton.jit
def _saturate(x, FP8_MAX: tl.constexpr):
    # Clamp instead of trusting the conversion: a plain cast turns overflow into NaN (e4m3fn)
    # or inf (e5m2). NaN must stay NaN, as in torch's clamp, so propagate it explicitly.
    return tl.clamp(x, -FP8_MAX, FP8_MAX, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def saturating_cast_kernel(
    # Pointers: input (any float dtype) and FP8 output, both contiguous
    x_ptr,
    y_ptr,
    # Size
    n_elements,
    # Static multiplier applied in fp32 before the cast (the backward's gradient scale)
    scale,
    # Meta-parameters
    FP8_MAX: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    pid = tl.program_id(axis=0).to(tl.int64)  # int64: a (16384, 32768) tensor exceeds 2**31
    offs = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < n_elements
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = _saturate(x * scale, FP8_MAX)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gelu(h):
    # The erf form, F.gelu's default.
    return 0.5 * h * (1.0 + tl.math.erf(h * 0.7071067811865476))


@triton.jit
def _gelu_grad(dy, h):
    # d GELU(h) / dh = Phi(h) + h * phi(h), as torch's GELU backward writes it.
    cdf = 0.5 * (1.0 + tl.math.erf(h * 0.7071067811865476))
    pdf = tl.exp(-0.5 * h * h) * 0.3989422804014327
    return dy * (cdf + h * pdf)


@triton.jit
def _activate(x, h, ACTIVATION: tl.constexpr):
    """What a cast with ``ACTIVATION`` casts, in fp32: x itself ("none"), GELU(x) ("gelu") or
    GELU'(h) * x ("gelu_grad": x the gradient of GELU's output), the activations rounded to
    bf16 first: the GELU MLP's tensor between its layers, as the unfused path stores it."""
    if ACTIVATION == "gelu":
        return _gelu(x.to(tl.float32)).to(tl.bfloat16).to(tl.float32)
    elif ACTIVATION == "gelu_grad":
        return _gelu_grad(x.to(tl.float32), h.to(tl.float32)).to(tl.bfloat16).to(tl.float32)
    else:
        return x.to(tl.float32)


def _cast_transpose_configs() -> list[triton.Config]:
    # Memory-bound: the tile only has to be large enough for 16-byte accesses on both the
    # row-major and the transposed store (1-byte FP8 -> 16 elements per thread and row).
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w)
        for bm, bn, w in [(64, 64, 4), (64, 128, 4), (128, 64, 4), (128, 128, 8)]
    ]


@triton.jit
def _cast_transpose_kernel(
    # Pointers: input (M, N) with any strides, GELU's input h (M, N) for "gelu_grad" (else
    # unused); FP8 outputs (M, N) and (N, M), contiguous (as their uint8 codes where READ_BACK)
    x_ptr,
    h_ptr,
    y_ptr,
    yt_ptr,
    # Sizes
    M,
    N,
    # Strides of the input and of h
    stride_xm,
    stride_xn,
    stride_hm,
    stride_hn,
    # Static multiplier applied in fp32 before the cast
    scale,
    # Meta-parameters
    ACTIVATION: tl.constexpr,  # see `_activate`
    FP8_MAX: tl.constexpr,
    WRITE_Y: tl.constexpr,
    WRITE_YT: tl.constexpr,
    READ_BACK: tl.constexpr,  # yt from y's stored tile, not from registers (fp32 inputs)
    FP8_DTYPE: tl.constexpr,  # y's element type, for its codes where READ_BACK
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(axis=0)
    pid_n = tl.program_id(axis=1)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    x = tl.load(
        x_ptr + offs_m[:, None] * stride_xm + offs_n[None, :] * stride_xn, mask=mask, other=0.0
    )
    h = x
    if ACTIVATION == "gelu_grad":
        h_offs = offs_m[:, None] * stride_hm + offs_n[None, :] * stride_hn
        h = tl.load(h_ptr + h_offs, mask=mask, other=0.0)
    y = _saturate(_activate(x, h, ACTIVATION) * scale, FP8_MAX)  # (BM, BN), exact FP8 values
    y_offs = offs_m[:, None] * N + offs_n[None, :]
    # The transposed tile's mask is built from the offsets rather than transposed.
    mask_t = (offs_n[:, None] < N) & (offs_m[None, :] < M)
    yt_offs = offs_n[:, None] * M + offs_m[None, :]
    if READ_BACK:
        # With triton 3.6 on an H100 the transposed store of a tile computed from an fp32
        # input wrote wrong elements with every config (bf16 inputs: exact). As in
        # `kernels.triton_norm`'s forward: y's codes are stored (y is scratch where only yt
        # is asked for), and after a CTA barrier the tile is read back (L2) and stored
        # transposed.
        codes = y.to(FP8_DTYPE).to(tl.uint8, bitcast=True)
        tl.store(y_ptr + y_offs, codes, mask=mask)
        tl.debug_barrier()  # every thread's y stores are visible to the program
        back = tl.load(y_ptr + y_offs, mask=mask, other=0)
        tl.store(yt_ptr + yt_offs, tl.trans(back), mask=mask_t)
    else:
        if WRITE_Y:
            tl.store(y_ptr + y_offs, y.to(yt_ptr.dtype.element_ty), mask=mask)
        if WRITE_YT:
            # The transposed tile goes out through shared memory (Triton inserts the layout
            # conversion), so both stores stay coalesced.
            yt = tl.trans(y).to(yt_ptr.dtype.element_ty)  # (BN, BM)
            tl.store(yt_ptr + yt_offs, yt, mask=mask_t)


CAST_TRANSPOSE = Tuner("cast_transpose", _cast_transpose_kernel, _cast_transpose_configs())
ACTIVATIONS = ("none", "gelu", "gelu_grad")


def saturating_cast(x: torch.Tensor, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    """``fp8(clamp(x * scale, ±max))`` of any float tensor, same shape, contiguous."""
    check_device(x)
    limit = fp8_max(dtype)
    x = x.contiguous()
    y = torch.empty(x.shape, device=x.device, dtype=dtype)
    n = x.numel()
    if n == 0:
        return y
    block = 1024 if INTERPRET else 4096
    grid = (triton.cdiv(n, block),)
    saturating_cast_kernel[grid](
        x,
        y,
        n,
        scale,
        FP8_MAX=limit,
        BLOCK_SIZE=block,
        num_warps=1 if INTERPRET else 8,
    )
    return y


def cast_transpose(
    x: torch.Tensor,
    dtype: torch.dtype,
    scale: float = 1.0,
    *,
    rows: bool = True,
    cols: bool = True,
    activation: str = "none",
    h: torch.Tensor | None = None,
    config: dict[str, Any] | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Saturating cast of ``x * scale`` for a 2-D ``x`` (M, N), as ``(y, yt)`` in one pass.

    ``y`` is the row-major (M, N) copy and ``yt`` the transposed (N, M) one, both contiguous;
    ``rows=False`` or ``cols=False`` skips writing (and allocating) one of them. ``config``
    (BLOCK_M, BLOCK_N, num_warps) runs those meta-parameters instead of autotuning.

    ``activation`` (the GELU MLP's, in the same pass): ``"gelu"`` casts ``GELU(x)``,
    ``"gelu_grad"`` casts ``GELU'(h) * x`` for x the gradient of GELU's output and ``h`` its
    input (M, N); each rounded to bf16 before ``* scale`` and the cast, as the unfused path's
    GELU (or its backward) stores its output.
    """
    check_device(x)
    if x.ndim != 2:
        raise ValueError(f"cast_transpose takes a 2-D tensor, got shape {tuple(x.shape)}")
    if not (rows or cols):
        raise ValueError("nothing to write: rows and cols are both False")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if (activation == "gelu_grad") != (h is not None):
        raise ValueError("h (GELU's input) is given exactly for activation='gelu_grad'")
    if h is not None and h.shape != x.shape:
        raise ValueError(f"h must have x's shape {tuple(x.shape)}, got {tuple(h.shape)}")
    h_arg = h if h is not None else x
    limit = fp8_max(dtype)
    M, N = x.shape
    # fp32 inputs take yt from y's stored tile (see the kernel): y is written wherever yt is
    read_back = cols and x.element_size() == 4
    y = torch.empty((M, N), device=x.device, dtype=dtype) if rows or read_back else None
    yt = torch.empty((N, M), device=x.device, dtype=dtype) if cols else None
    if x.numel() == 0:
        return (y if rows else None), yt
    y_arg = y if y is not None else yt
    yt_arg = yt if yt is not None else y
    assert y_arg is not None and yt_arg is not None
    if read_back:  # bytes: the read-back tile is codes
        y_arg, yt_arg = y_arg.view(torch.uint8), yt_arg.view(torch.uint8)
    args = (x, h_arg, y_arg, yt_arg, M, N, *x.stride(), *h_arg.stride(), scale)
    meta = {
        "ACTIVATION": activation,
        "FP8_MAX": limit,
        "FP8_DTYPE": _TRITON_FP8[dtype],
        "WRITE_Y": rows,
        "WRITE_YT": cols,
        "READ_BACK": read_back,
    }

    def launch(config: dict[str, Any], *, warmup: bool = False) -> None:
        grid = (triton.cdiv(M, config["BLOCK_M"]), triton.cdiv(N, config["BLOCK_N"]))
        _cast_transpose_kernel.run(*args, grid=grid, warmup=warmup, **meta, **config)

    key = (M, N, x.dtype, dtype, x.stride(1) == 1, rows, cols, activation)
    launch_tuned(
        CAST_TRANSPOSE, key, launch, config, interpreter_config={"BLOCK_M": 32, "BLOCK_N": 32}
    )
    return (y if rows else None), yt
