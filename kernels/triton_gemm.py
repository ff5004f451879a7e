"""Triton kernels of the µS FP8 GEMM: ``C = (A @ Bᵀ) * scale``, and the cuBLAS route.

A ``(M, K)`` and B ``(N, K)`` are both K-contiguous FP8 operands (e4m3 or e5m2), accumulated
in fp32, with the static scale and the output cast (bf16 activations, fp32 weight gradients)
fused into the epilogue. Two kernels in the shape of the Triton tutorials
(``03-matrix-multiplication``, ``09-persistent-matmul``):

* ``_fp8_matmul_tma_persistent_kernel``: persistent, operands through TMA descriptors
  (Hopper, the fast one);
* ``_fp8_matmul_kernel``: the tutorial's pointer kernel (any GPU, any alignment, the
  interpreter).

`fp8_matmul` checks, allocates and launches one of them, or ``torch._scaled_mm`` (cuBLAS)
where that is faster at the shape (`GEMM_LIBRARY`). Each kernel's tiles
are chosen per shape by its tuner (`kernels.triton_launch.launch_tuned`).

Both kernels also end in the GELU MLP's epilogues, which cuBLAS has no form of (the tile is
in registers once; the unfused path writes it in bf16 and reads it back, 4 bytes an
element of the 4d-wide hidden layer):

* ``"gelu"`` (`fp8_matmul_gelu`, the up projection): stores h in bf16 (for the backward)
  and GELU(h)'s e4m3 casts, row-major and transposed: the down projection's operands;
* ``"gelu_grad"`` (`fp8_matmul_gelu_grad`, the down projection's input gradient): reads h
  and stores GELU'(h) times the product as e5m2, row-major and transposed: the up
  projection's gradient operands, so that no cast of the gradient runs on its own.

Each rounds where the unfused path does (bf16 GEMM output, bf16 GELU output or gradient,
then the saturating FP8 cast), so fusing changes no number.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from kernels.formats import E4M3, E5M2, FP8_DTYPES
from kernels.triton_casts import ACTIVATIONS, _saturate, activate
from kernels.triton_launch import INTERPRET, Meta, check_device, fp8_max, launch_tuned
from kernels.tuning import Key, Tuner

OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
EPILOGUES = ACTIVATIONS  # an epilogue applies the casts' activation of the same name


@triton.jit
def _tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    # Grouped ordering (tutorial 03): GROUP_M row-blocks share each column-block of B while it
    # is in L2, so B is read from DRAM about num_pid_m / GROUP_M times instead of num_pid_m.
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = tile_id // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (tile_id % group_size_m)
    pid_n = (tile_id % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def _mma(a, b, acc, PRECISE_ACC: tl.constexpr, BLOCK_K: tl.constexpr):
    # Hopper's FP8 MMA adds its products into the accumulator with fewer bits than fp32
    # (cuBLAS's "fast accumulation"). PRECISE_ACC promotes the partial sum into a true fp32
    # accumulator every BLOCK_K products, at some cost in registers and instructions.
    if PRECISE_ACC:
        return tl.dot(a, b, acc, max_num_imprecise_acc=BLOCK_K)
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _gelu_epilogue(out, h, cast_scale, EPILOGUE: tl.constexpr, FP8_MAX: tl.constexpr):
    """The fp32 values whose FP8 casts a GELU epilogue stores: `activate`'s (GELU(out) for
    "gelu", where ``out`` is h; GELU'(h) * out for "gelu_grad") times ``cast_scale``,
    saturated."""
    return _saturate(activate(out, h, EPILOGUE) * cast_scale, FP8_MAX)


def _matmul_configs() -> list[triton.Config]:
    # Tutorial-style tiles, plus narrow ones for the proxies' small N and K.
    return [
        triton.Config(
            {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_stages=s, num_warps=w
        )
        for bm, bn, bk, s, w in [
            (128, 256, 128, 3, 8),
            (128, 128, 128, 4, 8),
            (128, 128, 128, 4, 4),
            (64, 128, 128, 4, 4),
            (64, 64, 64, 4, 4),
        ]
    ]


@triton.jit
def _fp8_matmul_kernel(
    # Pointers: A (M, K) and B (N, K) in FP8, C (M, N) in the output dtype (h in bf16 for
    # the GELU epilogues: written by "gelu", read by "gelu_grad"), and the epilogue's FP8
    # outputs D (M, N) and Dt (N, M), contiguous (unused without a GELU epilogue)
    a_ptr,
    b_ptr,
    c_ptr,
    d_ptr,
    dt_ptr,
    # Sizes
    M,
    N,
    K,
    # Strides
    stride_am,
    stride_ak,
    stride_bn,
    stride_bk,
    stride_cm,
    stride_cn,
    # Static output multiplier, applied to the fp32 accumulator before the output cast, and
    # the GELU epilogues' multiplier before their FP8 cast
    scale,
    cast_scale,
    # Meta-parameters
    EPILOGUE: tl.constexpr,  # one of EPILOGUES
    FP8_MAX: tl.constexpr,  # D's largest value, where a GELU epilogue saturates
    PRECISE_ACC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid = tl.program_id(axis=0)
    pid_m, pid_n = _tile_coords(pid, tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)

    # Rows past M (columns past N) wrap to row 0: they are computed but never stored, which
    # keeps the loads in the K loop unmasked along M and N.
    offs_am = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M
    offs_bn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_am[:, None].to(tl.int64) * stride_am + offs_k[None, :] * stride_ak
    # B is read as a (BLOCK_K, BLOCK_N) tile whose contiguous dimension is K: the K-major
    # layout that the FP8 tensor cores need.
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_bn[None, :].to(tl.int64) * stride_bn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        acc = _mma(a, b, acc, PRECISE_ACC, BLOCK_K)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    offs_cm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_cn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    c_offs = offs_cm[:, None] * stride_cm + offs_cn[None, :] * stride_cn
    c_mask = (offs_cm[:, None] < M) & (offs_cn[None, :] < N)
    out = (acc * scale).to(c_ptr.dtype.element_ty)
    if EPILOGUE == "none":
        tl.store(c_ptr + c_offs, out, mask=c_mask)
    else:
        if EPILOGUE == "gelu":
            tl.store(c_ptr + c_offs, out, mask=c_mask)
            h = out
        else:
            h = tl.load(c_ptr + c_offs, mask=c_mask, other=0.0)
        fp8 = _gelu_epilogue(out, h, cast_scale, EPILOGUE, FP8_MAX).to(d_ptr.dtype.element_ty)
        tl.store(d_ptr + offs_cm[:, None] * N + offs_cn[None, :], fp8, mask=c_mask)
        dt_mask = (offs_cn[:, None] < N) & (offs_cm[None, :] < M)
        tl.store(dt_ptr + offs_cn[:, None] * M + offs_cm[None, :], tl.trans(fp8), mask=dt_mask)


FP8_MATMUL_SIMPLE = Tuner("fp8_matmul_simple", _fp8_matmul_kernel, _matmul_configs())


def _matmul_tma_configs() -> list[triton.Config]:
    # The shapes µS uses: M = tokens per step, N and K in {d, 4d}. 128 x 256 x 128 tiles
    # with 8 warps (two consumer warpgroups) is the usual best on H100 for FP8 at full size;
    # the smaller tiles cover the narrow weight-gradient outputs (N x K, few tiles) and the
    # proxies, whose d of 128-512 leaves a large tile with most SMs idle.
    return [
        triton.Config(
            {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "EPILOGUE_SPLIT": sp},
            num_stages=s,
            num_warps=w,
        )
        for bm, bn, bk, s, w, sp in [
            (128, 256, 128, 3, 8, 2),
            (128, 256, 128, 4, 8, 4),
            (128, 256, 64, 4, 8, 2),
            (256, 128, 128, 3, 8, 2),
            (128, 128, 128, 4, 8, 1),
            (128, 128, 128, 5, 4, 2),
            (128, 64, 128, 4, 4, 1),
            (64, 128, 128, 4, 4, 1),
            (64, 64, 128, 4, 4, 1),
            (64, 64, 64, 3, 4, 1),
        ]
    ]


@triton.jit
def _fp8_matmul_tma_persistent_kernel(
    # TMA descriptors: A (M, K) and B (N, K) in FP8, C (M, N) in the output dtype (h, for
    # the GELU epilogues), D (M, N) and Dt (N, M) in FP8 (as in _fp8_matmul_kernel)
    a_desc,
    b_desc,
    c_desc,
    d_desc,
    dt_desc,
    # Sizes
    M,
    N,
    K,
    # Static multipliers, as in _fp8_matmul_kernel
    scale,
    cast_scale,
    # Meta-parameters
    EPILOGUE: tl.constexpr,
    FP8_MAX: tl.constexpr,
    PRECISE_ACC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EPILOGUE_SPLIT: tl.constexpr,
    NUM_SMS: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr = False,
):
    # One program per SM walks the output tiles with stride NUM_SMS. Flattening the tile and
    # K loops lets the software pipeline issue the next tile's TMA loads while this tile's
    # epilogue runs, which a one-tile-per-program grid cannot do.
    start_pid = tl.program_id(axis=0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    num_tiles = num_pid_m * num_pid_n

    # The epilogue recomputes its tile's coordinates from its own counter: sharing the loop
    # variable between the prologue and the epilogue of the flattened loop defeats the
    # pipeliner.
    tile_id_c = start_pid - NUM_SMS
    for tile_id in tl.range(
        start_pid, num_tiles, NUM_SMS, flatten=True, warp_specialize=WARP_SPECIALIZE
    ):
        pid_m, pid_n = _tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M)
        offs_am = pid_m * BLOCK_M
        offs_bn = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ki in range(k_tiles):
            offs_k = ki * BLOCK_K
            a = a_desc.load([offs_am, offs_k])  # (BM, BK); out-of-bounds boxes read as zero
            b = b_desc.load([offs_bn, offs_k])  # (BN, BK), K-major: .T is free
            acc = _mma(a, b.T, acc, PRECISE_ACC, BLOCK_K)

        tile_id_c += NUM_SMS
        pid_m, pid_n = _tile_coords(tile_id_c, num_pid_m, num_pid_n, GROUP_M)
        offs_cm = pid_m * BLOCK_M
        offs_cn = pid_n * BLOCK_N
        # Storing the tile in EPILOGUE_SPLIT column slices shrinks the shared-memory staging
        # buffers of the TMA stores (a 128 x 256 fp32 tile is 128 KiB), leaving room for
        # deeper operand pipelining.
        out = (c_desc, d_desc, dt_desc, scale, cast_scale)
        if EPILOGUE_SPLIT == 1:
            _store_tma(acc, offs_cm, offs_cn, out, EPILOGUE, FP8_MAX)
        elif EPILOGUE_SPLIT == 2:
            _store_halves_tma(acc, offs_cm, offs_cn, out, EPILOGUE, FP8_MAX, BLOCK_M, BLOCK_N)
        else:
            tl.static_assert(EPILOGUE_SPLIT == 4, "EPILOGUE_SPLIT must be 1, 2 or 4")
            # BLOCK_N // 2 written out at each use: a name assigned inside the tile loop is a
            # loop value (a tensor) to triton 3.6, which a shape may not take.
            left, right = _halves(acc, BLOCK_M, BLOCK_N)
            _store_halves_tma(left, offs_cm, offs_cn, out, EPILOGUE, FP8_MAX, BLOCK_M, BLOCK_N // 2)
            _store_halves_tma(
                right,
                offs_cm,
                offs_cn + BLOCK_N // 2,
                out,
                EPILOGUE,
                FP8_MAX,
                BLOCK_M,
                BLOCK_N // 2,
            )


@triton.jit
def _halves(acc, ROWS: tl.constexpr, COLS: tl.constexpr):
    # The left and right column halves of a (ROWS, COLS) tile.
    return tl.split(tl.permute(tl.reshape(acc, (ROWS, 2, COLS // 2)), (0, 2, 1)))


@triton.jit
def _store_halves_tma(
    acc,
    offs_cm,
    offs_cn,
    out,
    EPILOGUE: tl.constexpr,
    FP8_MAX: tl.constexpr,
    ROWS: tl.constexpr,
    COLS: tl.constexpr,
):
    left, right = _halves(acc, ROWS, COLS)
    _store_tma(left, offs_cm, offs_cn, out, EPILOGUE, FP8_MAX)
    _store_tma(right, offs_cm, offs_cn + COLS // 2, out, EPILOGUE, FP8_MAX)


@triton.jit
def _store_tma(acc, offs_cm, offs_cn, out, EPILOGUE: tl.constexpr, FP8_MAX: tl.constexpr):
    # One slice of the output tile, at (offs_cm, offs_cn), through the descriptors of `out`:
    # (C, D, Dt, scale, cast_scale), as the kernel's arguments of those names.
    c_desc, d_desc, dt_desc, scale, cast_scale = out
    c = (acc * scale).to(c_desc.dtype)
    if EPILOGUE == "none":
        c_desc.store([offs_cm, offs_cn], c)
    else:
        if EPILOGUE == "gelu":
            c_desc.store([offs_cm, offs_cn], c)
            h = c
        else:
            h = c_desc.load([offs_cm, offs_cn])
        fp8 = _gelu_epilogue(c, h, cast_scale, EPILOGUE, FP8_MAX).to(d_desc.dtype)
        d_desc.store([offs_cm, offs_cn], fp8)
        dt_desc.store([offs_cn, offs_cm], tl.trans(fp8))


FP8_MATMUL_TMA = Tuner("fp8_matmul_tma", _fp8_matmul_tma_persistent_kernel, _matmul_tma_configs())


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.cache
def _has_tma(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] >= 9


def _tma_aligned(*tensors: torch.Tensor) -> bool:
    # TMA needs 16-byte aligned bases and row strides (K % 16 for FP8 operands).
    return all(
        t.data_ptr() % 16 == 0 and (t.stride(0) * t.element_size()) % 16 == 0 for t in tensors
    )


def _tma_ok(*tensors: torch.Tensor) -> bool:
    if INTERPRET or not _has_tma(tensors[0].device.index or 0):
        return False
    return _tma_aligned(*tensors)


def fp8_matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    scale: float = 1.0,
    out_dtype: torch.dtype = torch.bfloat16,
    out: torch.Tensor | None = None,
    precise_acc: bool = False,
    kernel: str = "auto",
    config: dict[str, Any] | None = None,
) -> torch.Tensor:
    """``(a @ b.T) * scale`` for FP8 ``a`` (M, K) and ``b`` (N, K), K-contiguous, in ``out_dtype``.

    Args:
        scale: static multiplier fused into the epilogue.
        out_dtype: bf16 / fp16 / fp32; the output cast is fused into the epilogue too.
        out: optional preallocated (M, N) output, contiguous, of ``out_dtype``.
        precise_acc: promote the tensor cores' partial sums to fp32 every BLOCK_K products.
        kernel: ``"tma"`` (persistent, Hopper), ``"simple"`` (pointer loads), ``"cublas"``
            (``torch._scaled_mm``: the same FP8 products, accumulation and epilogue scale), or
            ``"auto"``: TMA where the device and the operands' alignment allow it, and
            whichever of TMA and cuBLAS is faster at this shape (timed once per machine:
            cuBLAS splits the long reductions of the proxies' weight gradients, which a
            persistent tile loop cannot).
        config: run these meta-parameters instead of autotuning (benchmarks, interpreter):
            BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages (+ EPILOGUE_SPLIT and
            WARP_SPECIALIZE for the TMA kernel).
    """
    M, N, K = _check_operands(a, b, kernel)
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")
    if out is None:
        out = torch.empty((M, N), device=a.device, dtype=out_dtype)
    elif out.shape != (M, N) or out.dtype != out_dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous ({M}, {N}) {out_dtype} tensor")
    if M == 0 or N == 0:
        return out
    if K == 0:
        return out.zero_()
    if kernel == "tma" and not _tma_aligned(a, b, out):
        raise ValueError("the TMA kernel needs 16-byte aligned rows: K % 16 == 0 and N * bytes")
    if kernel == "cublas":
        if not _cublas_ok(a, b):
            raise ValueError("cuBLAS needs M, N, K multiples of 16")
        _launch_cublas(a, b, out, scale, precise_acc)
        return out
    use_tma = kernel == "tma" or (kernel == "auto" and _tma_ok(a, b, out))

    def launch_triton() -> None:
        _launch_triton(a, b, out, scale, precise_acc, config, tma=use_tma)

    if kernel == "auto" and use_tma and _cublas_ok(a, b):
        key = (M, N, K, a.dtype, b.dtype, out_dtype, precise_acc)
        choice = GEMM_LIBRARY.config(
            key,
            lambda c: (
                _launch_cublas(a, b, out, scale, precise_acc)
                if c.kwargs["library"] == "cublas"
                else launch_triton()
            ),
        )
        if choice.kwargs["library"] == "cublas":
            _launch_cublas(a, b, out, scale, precise_acc)
            return out
    launch_triton()
    return out


def fp8_matmul_gelu(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    scale: float,
    kernel: str = "auto",
    config: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The up projection with the ``"gelu"`` epilogue: ``h = bf16((a @ b.T) * scale)`` and
    ``e4m3(bf16(GELU(h)))`` as a row-major (M, N) and a transposed (N, M) copy.

    Returns ``(h, act8, act8t)``. ``kernel`` is ``"auto"`` (TMA where it may run), ``"tma"``
    or ``"simple"``; ``config`` as in `fp8_matmul`.
    """
    M, N, _ = _check_fused(a, b, kernel)
    h = torch.empty((M, N), device=a.device, dtype=torch.bfloat16)
    act8 = torch.empty((M, N), device=a.device, dtype=E4M3)
    act8t = torch.empty((N, M), device=a.device, dtype=E4M3)
    _launch_fused(a, b, h, _Epilogue("gelu", act8, act8t, 1.0), scale, kernel, config)
    return h, act8, act8t


def fp8_matmul_gelu_grad(
    a: torch.Tensor,
    b: torch.Tensor,
    h: torch.Tensor,
    *,
    scale: float,
    grad_scale: float,
    kernel: str = "auto",
    config: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The down projection's input gradient with the ``"gelu_grad"`` epilogue: the gradient
    of GELU's input ``dh = bf16(GELU'(h) * bf16((a @ b.T) * scale))``, returned as
    ``e5m2(dh * grad_scale)`` row-major (M, N) and transposed (N, M): the up projection's
    backward operands. ``h`` (M, N) bf16 is the up projection's output (`fp8_matmul_gelu`).
    """
    M, N, _ = _check_fused(a, b, kernel)
    if h.shape != (M, N) or h.dtype != torch.bfloat16 or not h.is_contiguous():
        raise ValueError(f"h must be a contiguous ({M}, {N}) bf16 tensor, got {tuple(h.shape)}")
    g8 = torch.empty((M, N), device=a.device, dtype=E5M2)
    g8t = torch.empty((N, M), device=a.device, dtype=E5M2)
    _launch_fused(a, b, h, _Epilogue("gelu_grad", g8, g8t, grad_scale), scale, kernel, config)
    return g8, g8t


def _check_operands(a: torch.Tensor, b: torch.Tensor, kernel: str) -> tuple[int, int, int]:
    """(M, N, K) of FP8 operands a (M, K) and b (N, K) that a GEMM here can take."""
    check_device(a, b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need a (M, K) and b (N, K), got {tuple(a.shape)}, {tuple(b.shape)}")
    if a.dtype not in FP8_DTYPES or b.dtype not in FP8_DTYPES:
        raise ValueError(f"operands must be FP8, got {a.dtype}, {b.dtype}")
    if a.dtype == b.dtype == E5M2:
        raise ValueError("e5m2 x e5m2 has no FP8 tensor-core instruction; make one side e4m3")
    if a.stride(1) != 1 or b.stride(1) != 1:
        raise ValueError("both operands must be K-contiguous (row-major (M, K) and (N, K))")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    return a.shape[0], b.shape[0], a.shape[1]


def _check_fused(a: torch.Tensor, b: torch.Tensor, kernel: str) -> tuple[int, int, int]:
    M, N, K = _check_operands(a, b, kernel)
    if kernel == "cublas":
        raise ValueError("cuBLAS has no GELU epilogue: kernel must be 'auto', 'tma' or 'simple'")
    if min(M, N, K) == 0:
        raise ValueError(f"the GELU epilogues need non-empty operands, got M, N, K = {M, N, K}")
    return M, N, K


class _Epilogue(NamedTuple):
    """What the kernels do with a tile besides storing C (see the module docstring)."""

    kind: str  # one of EPILOGUES
    d: torch.Tensor  # (M, N) FP8
    dt: torch.Tensor  # (N, M) FP8
    cast_scale: float


def _launch_fused(
    a: torch.Tensor,
    b: torch.Tensor,
    h: torch.Tensor,
    epilogue: _Epilogue,
    scale: float,
    kernel: str,
    config: Meta | None,
) -> None:
    tma = kernel == "tma" or (kernel == "auto" and _tma_ok(a, b, h, epilogue.d, epilogue.dt))
    if kernel == "tma" and not _tma_aligned(a, b, h, epilogue.d, epilogue.dt):
        raise ValueError("the TMA kernel needs 16-byte aligned rows: K, N and M % 16 == 0")
    _launch_triton(a, b, h, scale, False, config, tma=tma, epilogue=epilogue)


KERNELS = ("auto", "tma", "simple", "cublas")
# Which library runs a product, per shape: our TMA kernel or cuBLAS. The
# "config" is only a label; each side's own tuning happens inside its first timed launch.
GEMM_LIBRARY = Tuner(
    "fp8_gemm_library",
    _fp8_matmul_tma_persistent_kernel,
    [triton.Config({"library": "triton"}), triton.Config({"library": "cublas"})],
)


def _cublas_ok(a: torch.Tensor, b: torch.Tensor) -> bool:
    # torch._scaled_mm's requirements: every dimension a multiple of 16, B column-major
    # (our (N, K) row-major B, transposed, is), not e5m2 on both sides (rejected above).
    return not INTERPRET and all(d % 16 == 0 for d in (*a.shape, b.shape[0]))


@functools.cache
def _scalar(value: float, device: torch.device) -> torch.Tensor:
    # _scaled_mm takes its scales as GPU tensors. Made once per value: creating one inside a
    # CUDA-graph capture would be a host-to-device copy, which a capture may not contain.
    return torch.tensor(value, dtype=torch.float32, device=device)


def _launch_cublas(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, scale: float, precise_acc: bool
) -> None:
    torch._scaled_mm(
        a,
        b.t(),
        scale_a=_scalar(scale, a.device),
        scale_b=_scalar(1.0, a.device),
        out_dtype=c.dtype,
        use_fast_accum=not precise_acc,
        out=c,
    )


# The interpreter cannot time configs: it runs these small tiles.
_INTERPRETER_TILES = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 2}


def _launch_triton(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    scale: float,
    precise_acc: bool,
    config: Meta | None,
    *,
    tma: bool,
    epilogue: _Epilogue | None = None,
) -> None:
    """The TMA or the pointer kernel into ``c`` (and the epilogue's outputs), with ``config``
    or its tuner's choice."""
    M, K = a.shape
    N = b.shape[0]
    kind = "none" if epilogue is None else epilogue.kind
    d, dt = (c, c) if epilogue is None else (epilogue.d, epilogue.dt)
    cast_scale = 1.0 if epilogue is None else epilogue.cast_scale
    meta = {
        "PRECISE_ACC": precise_acc,
        "EPILOGUE": kind,
        "FP8_MAX": fp8_max(d.dtype) if epilogue is not None else 0.0,
    }

    def launch_simple(config: Meta, *, warmup: bool = False) -> None:
        grid = (triton.cdiv(M, config["BLOCK_M"]) * triton.cdiv(N, config["BLOCK_N"]),)
        strides = (*a.stride(), *b.stride(), *c.stride())
        args = (a, b, c, d, dt, M, N, K, *strides, scale, cast_scale)
        _fp8_matmul_kernel.run(*args, grid=grid, warmup=warmup, **meta, **config)

    def launch_tma(config: Meta, *, warmup: bool = False) -> None:
        num_sms = 4 if INTERPRET else _num_sms(a.device.index or 0)
        config = {"EPILOGUE_SPLIT": 1, **config}
        # Host-side TMA descriptors carry their box size, which depends on the config.
        bm, bn, bk = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]
        bn_slice = bn // config["EPILOGUE_SPLIT"]
        c_desc = TensorDescriptor.from_tensor(c, [bm, bn_slice])
        if epilogue is None:  # D and Dt unused: C's descriptor stands in (no host work)
            d_desc = dt_desc = c_desc
        else:
            d_desc = TensorDescriptor.from_tensor(d, [bm, bn_slice])
            dt_desc = TensorDescriptor.from_tensor(dt, [bn_slice, bm])
        descs = (
            TensorDescriptor.from_tensor(a, [bm, bk]),
            TensorDescriptor.from_tensor(b, [bn, bk]),
            c_desc,
            d_desc,
            dt_desc,
        )
        grid = (min(num_sms, triton.cdiv(M, bm) * triton.cdiv(N, bn)),)
        _fp8_matmul_tma_persistent_kernel.run(
            *descs,
            M,
            N,
            K,
            scale,
            cast_scale,
            grid=grid,
            warmup=warmup,
            **meta,
            NUM_SMS=num_sms,
            **config,
        )

    tuner, launch = (FP8_MATMUL_TMA, launch_tma) if tma else (FP8_MATMUL_SIMPLE, launch_simple)
    key: Key = (M, N, K, a.dtype, b.dtype, c.dtype, precise_acc)
    if epilogue is not None:
        key = (*key, kind)
    launch_tuned(tuner, key, launch, config, interpreter_config=_INTERPRETER_TILES)
