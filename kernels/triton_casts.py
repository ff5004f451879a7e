"""Triton kernels of the µS FP8 casts: saturating cast, and cast+transpose in one pass.

Under µS no operand needs a dynamic scale, so a cast is one read and one write, no amax:

* ``saturating_cast_kernel``: ``fp8(clamp(x * scale, ±max))`` over a flat tensor.
  Optionally GELU first (an MLP's hidden activation, computed in fp32 and cast at once).
* ``_cast_transpose_kernel``: the same cast over a 2-D tile, written row-major *and*
  transposed in one pass. Hopper's FP8 tensor cores take both operands K-major only, so each
  backward GEMM needs one operand transposed; producing it while the tile is in registers
  costs one extra 1-byte write instead of a second pass over the 2- or 4-byte input.

`saturating_cast` and `cast_transpose` check, allocate and launch; the cast+transpose tiles
are chosen per shape by the `CAST_TRANSPOSE` tuner (`kernels.triton_launch.launch_tuned`).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from kernels.triton_launch import INTERPRET, check_device, fp8_max, launch_tuned
from kernels.tuning import Tuner


@triton.jit
def _saturate(x, FP8_MAX: tl.constexpr):
    # Clamp instead of trusting the conversion: a plain cast turns overflow into NaN (e4m3fn)
    # or inf (e5m2). NaN must stay NaN, as in torch's clamp, so propagate it explicitly.
    return tl.clamp(x, -FP8_MAX, FP8_MAX, propagate_nan=tl.PropagateNan.ALL)


# Its derivative, for the backward, is `kernels.triton_gemm._gelu_grad` (a GEMM epilogue).
@triton.jit
def _gelu(x):
    # Exact (erf) GELU, as torch's default: x * Phi(x).
    return 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))


@triton.jit
def _activate(x, ACTIVATION: tl.constexpr):
    if ACTIVATION == "gelu":
        return _gelu(x)
    else:
        return x


@triton.jit
def saturating_cast_kernel(
    # Pointers: input (any float dtype) and FP8 output, both contiguous
    x_ptr,
    y_ptr,
    # Size
    n_elements,
    # Static multiplier applied in fp32 before the cast (the backward's gradient scale)
    scale,
    # Meta-parameters. ACTIVATION ("" or "gelu") is applied in fp32 before the scale.
    FP8_MAX: tl.constexpr,
    ACTIVATION: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    pid = tl.program_id(axis=0).to(tl.int64)  # int64: a (16384, 32768) tensor exceeds 2**31
    offs = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < n_elements
    x = _activate(tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32), ACTIVATION)
    y = _saturate(x * scale, FP8_MAX)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def _cast_transpose_configs() -> list[triton.Config]:
    # Memory-bound: the tile only has to be large enough for 16-byte accesses on both the
    # row-major and the transposed store (1-byte FP8 -> 16 elements per thread and row).
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w)
        for bm, bn, w in [(64, 64, 4), (64, 128, 4), (128, 64, 4), (128, 128, 8)]
    ]


@triton.jit
def _cast_transpose_kernel(
    # Pointers: input (M, N) with any strides; FP8 outputs (M, N) and (N, M), contiguous
    x_ptr,
    y_ptr,
    yt_ptr,
    # Sizes
    M,
    N,
    # Strides of the input
    stride_xm,
    stride_xn,
    # Static multiplier applied in fp32 before the cast
    scale,
    # Meta-parameters. ACTIVATION ("" or "gelu") is applied in fp32 before the scale: the
    # GELU output goes to FP8 without a round trip through memory in bf16.
    FP8_MAX: tl.constexpr,
    ACTIVATION: tl.constexpr,
    WRITE_Y: tl.constexpr,
    WRITE_YT: tl.constexpr,
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
    x = _activate(x.to(tl.float32), ACTIVATION)
    y = _saturate(x * scale, FP8_MAX)  # (BM, BN), fp32, exact FP8 values
    if WRITE_Y:
        tl.store(
            y_ptr + offs_m[:, None] * N + offs_n[None, :], y.to(yt_ptr.dtype.element_ty), mask=mask
        )
    if WRITE_YT:
        # The transposed tile goes out through shared memory (Triton inserts the layout
        # conversion), so both stores stay coalesced. Its mask is built from the offsets
        # rather than transposed. (fp32 inputs take a detour: see cast_transpose.)
        mask_t = (offs_n[:, None] < N) & (offs_m[None, :] < M)
        yt = tl.trans(y).to(yt_ptr.dtype.element_ty)  # (BN, BM)
        tl.store(yt_ptr + offs_n[:, None] * M + offs_m[None, :], yt, mask=mask_t)


CAST_TRANSPOSE = Tuner("cast_transpose", _cast_transpose_kernel, _cast_transpose_configs())


ACTIVATIONS = ("", "gelu")


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def saturating_cast(
    x: torch.Tensor, dtype: torch.dtype, scale: float = 1.0, *, activation: str = ""
) -> torch.Tensor:
    """``fp8(clamp(act(x) * scale, ±max))`` of any float tensor, same shape, contiguous.

    ``activation``: ``""`` (none) or ``"gelu"`` (exact GELU, computed in fp32).
    """
    check_device(x)
    _check_activation(activation)
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
        ACTIVATION=activation,
        BLOCK_SIZE=block,
        num_warps=1 if INTERPRET else 8,
    )
    return y


def cast_transpose(
    x: torch.Tensor,
    dtype: torch.dtype,
    scale: float = 1.0,
    *,
    activation: str = "",
    rows: bool = True,
    cols: bool = True,
    config: dict[str, Any] | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Saturating cast of ``act(x) * scale`` for a 2-D ``x`` (M, N), as ``(y, yt)`` in one pass.

    ``y`` is the row-major (M, N) copy and ``yt`` the transposed (N, M) one, both contiguous;
    ``rows=False`` or ``cols=False`` skips writing (and allocating) one of them. ``activation``
    is ``""`` or ``"gelu"``. ``config`` (BLOCK_M, BLOCK_N, num_warps) runs those
    meta-parameters instead of autotuning.
    """
    check_device(x)
    _check_activation(activation)
    if x.ndim != 2:
        raise ValueError(f"cast_transpose takes a 2-D tensor, got shape {tuple(x.shape)}")
    if not (rows or cols):
        raise ValueError("nothing to write: rows and cols are both False")
    limit = fp8_max(dtype)
    M, N = x.shape
    if cols and x.element_size() == 4 and not INTERPRET:
        # Workaround: with triton 3.6 on an H100 the transposed store of this kernel wrote
        # wrong elements for fp32 inputs, with every config (bf16 inputs: bit-exact with
        # all). The row-major FP8 copy is exact in bf16, so the transposed copy is made from
        # it by the bf16 path: one extra pass over 3 bytes per element, bit-exact.
        y, _ = cast_transpose(x, dtype, scale, activation=activation, cols=False, config=config)
        assert y is not None
        _, yt = cast_transpose(y.to(torch.bfloat16), dtype, 1.0, rows=False, config=config)
        return (y if rows else None), yt
    y = torch.empty((M, N), device=x.device, dtype=dtype) if rows else None
    yt = torch.empty((N, M), device=x.device, dtype=dtype) if cols else None
    if x.numel() == 0:
        return y, yt
    y_arg = y if y is not None else yt
    yt_arg = yt if yt is not None else y
    args = (x, y_arg, yt_arg, M, N, x.stride(0), x.stride(1), scale)
    meta = {"FP8_MAX": limit, "ACTIVATION": activation, "WRITE_Y": rows, "WRITE_YT": cols}

    def launch(config: dict[str, Any], *, warmup: bool = False) -> None:
        grid = (triton.cdiv(M, config["BLOCK_M"]), triton.cdiv(N, config["BLOCK_N"]))
        _cast_transpose_kernel.run(*args, grid=grid, warmup=warmup, **meta, **config)

    key = (M, N, x.dtype, dtype, x.stride(1) == 1, activation, rows, cols)
    launch_tuned(
        CAST_TRANSPOSE, key, launch, config, interpreter_config={"BLOCK_M": 32, "BLOCK_N": 32}
    )
    return y, yt
