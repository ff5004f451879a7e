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
"""

from __future__ import annotations

import functools
from typing import Any, Literal, get_args

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from kernels.formats import E5M2, FP8_DTYPES
from kernels.triton_launch import INTERPRET, Meta, check_device, launch_tuned
from kernels.tuning import Tuner

OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


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
    # Pointers: A (M, K) and B (N, K) in FP8, C (M, N) in the output dtype
    a_ptr,
    b_ptr,
    c_ptr,
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
    # Static output multiplier, applied to the fp32 accumulator before the output cast
    scale,
    # Meta-parameters
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
    c = acc * scale
    tl.store(c_ptr + c_offs, c.to(c_ptr.dtype.element_ty), mask=c_mask)


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
    # TMA descriptors: A (M, K) and B (N, K) in FP8, C (M, N) in the output dtype
    a_desc,
    b_desc,
    c_desc,
    # Sizes
    M,
    N,
    K,
    # Static output multiplier, applied to the fp32 accumulator before the output cast
    scale,
    # Meta-parameters
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
        acc = acc * scale
        # Storing the tile in EPILOGUE_SPLIT column slices shrinks the shared-memory staging
        # buffer of the TMA store (a 128 x 256 fp32 tile is 128 KiB), leaving room for
        # deeper operand pipelining.
        if EPILOGUE_SPLIT == 1:
            c_desc.store([offs_cm, offs_cn], acc.to(c_desc.dtype))
        elif EPILOGUE_SPLIT == 2:
            acc = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
            acc0, acc1 = tl.split(acc)
            c_desc.store([offs_cm, offs_cn], acc0.to(c_desc.dtype))
            c_desc.store([offs_cm, offs_cn + BLOCK_N // 2], acc1.to(c_desc.dtype))
        else:
            tl.static_assert(EPILOGUE_SPLIT == 4, "EPILOGUE_SPLIT must be 1, 2 or 4")
            acc = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
            left, right = tl.split(acc)
            left = tl.permute(tl.reshape(left, (BLOCK_M, 2, BLOCK_N // 4)), (0, 2, 1))
            right = tl.permute(tl.reshape(right, (BLOCK_M, 2, BLOCK_N // 4)), (0, 2, 1))
            acc0, acc1 = tl.split(left)
            acc2, acc3 = tl.split(right)
            q = BLOCK_N // 4
            c_desc.store([offs_cm, offs_cn], acc0.to(c_desc.dtype))
            c_desc.store([offs_cm, offs_cn + q], acc1.to(c_desc.dtype))
            c_desc.store([offs_cm, offs_cn + 2 * q], acc2.to(c_desc.dtype))
            c_desc.store([offs_cm, offs_cn + 3 * q], acc3.to(c_desc.dtype))


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
            persistent tile loop cannot), unless `route_gemms` pinned one library.
        config: run these meta-parameters instead of autotuning (benchmarks, interpreter):
            BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages (+ EPILOGUE_SPLIT and
            WARP_SPECIALIZE for the TMA kernel).
    """
    check_device(a, b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need a (M, K) and b (N, K), got {tuple(a.shape)}, {tuple(b.shape)}")
    if a.dtype not in FP8_DTYPES or b.dtype not in FP8_DTYPES:
        raise ValueError(f"operands must be FP8, got {a.dtype}, {b.dtype}")
    if a.dtype == b.dtype == E5M2:
        raise ValueError("e5m2 x e5m2 has no FP8 tensor-core instruction; make one side e4m3")
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")
    if a.stride(1) != 1 or b.stride(1) != 1:
        raise ValueError("both operands must be K-contiguous (row-major (M, K) and (N, K))")
    M, K = a.shape
    N = b.shape[0]
    if out is None:
        out = torch.empty((M, N), device=a.device, dtype=out_dtype)
    elif out.shape != (M, N) or out.dtype != out_dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous ({M}, {N}) {out_dtype} tensor")
    if M == 0 or N == 0:
        return out
    if K == 0:
        return out.zero_()

    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
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
        library = _routing
        if library == "timed":
            key = (M, N, K, a.dtype, b.dtype, out_dtype, precise_acc)
            choice = GEMM_LIBRARY.config(
                key,
                lambda c: (
                    _launch_cublas(a, b, out, scale, precise_acc)
                    if c.kwargs["library"] == "cublas"
                    else launch_triton()
                ),
            )
            library = choice.kwargs["library"]
        if library == "cublas":
            _launch_cublas(a, b, out, scale, precise_acc)
            return out
    launch_triton()
    return out


KERNELS = ("auto", "tma", "simple", "cublas")
# Which library an "auto" product runs where both can: the faster at its shape, timed alone
# once per machine ("timed"), or always one of them. A whole training step pinned to each
# tells whether the per-shape choice, made in isolation, is also the faster inside the step.
Routing = Literal["timed", "triton", "cublas"]
_routing: Routing = "timed"


def route_gemms(routing: Routing) -> Routing:
    """Make this process's "auto" products take ``routing``; returns the one before."""
    global _routing
    if routing not in get_args(Routing):
        raise ValueError(f"routing must be one of {get_args(Routing)}, got {routing!r}")
    previous, _routing = _routing, routing
    return previous


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
) -> None:
    """The TMA or the pointer kernel into ``c``, with ``config`` or its tuner's choice."""
    M, K = a.shape
    N = b.shape[0]
    meta = {"PRECISE_ACC": precise_acc}

    def launch_simple(config: Meta, *, warmup: bool = False) -> None:
        grid = (triton.cdiv(M, config["BLOCK_M"]) * triton.cdiv(N, config["BLOCK_N"]),)
        strides = (*a.stride(), *b.stride(), *c.stride())
        args = (a, b, c, M, N, K, *strides, scale)
        _fp8_matmul_kernel.run(*args, grid=grid, warmup=warmup, **meta, **config)

    def launch_tma(config: Meta, *, warmup: bool = False) -> None:
        num_sms = 4 if INTERPRET else _num_sms(a.device.index or 0)
        config = {"EPILOGUE_SPLIT": 1, **config}
        # Host-side TMA descriptors carry their box size, which depends on the config.
        bm, bn, bk = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]
        c_box = [bm, bn // config["EPILOGUE_SPLIT"]]
        descs = (
            TensorDescriptor.from_tensor(a, [bm, bk]),
            TensorDescriptor.from_tensor(b, [bn, bk]),
            TensorDescriptor.from_tensor(c, c_box),
        )
        grid = (min(num_sms, triton.cdiv(M, bm) * triton.cdiv(N, bn)),)
        _fp8_matmul_tma_persistent_kernel.run(
            *descs, M, N, K, scale, grid=grid, warmup=warmup, **meta, NUM_SMS=num_sms, **config
        )

    tuner, launch = (FP8_MATMUL_TMA, launch_tma) if tma else (FP8_MATMUL_SIMPLE, launch_simple)
    key = (M, N, K, a.dtype, b.dtype, c.dtype, precise_acc)
    launch_tuned(tuner, key, launch, config, interpreter_config=_INTERPRETER_TILES)
