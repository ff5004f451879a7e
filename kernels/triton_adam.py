"""Triton kernel of `CompressedAdamW`'s step: one pass over a parameter and its moments.

The torch path (`models.compressed_adam`) decompresses each moment to fp32, runs AdamW's
update and compresses again: dozens of elementwise kernels per parameter with FP8 moments,
each a pass over fp32 temporaries (the padded blocks, the hash noise, the rounding), which
made the FP8-moments training step 2.3-2.7x slower than torch's fused fp32 AdamW. This kernel
reads the weight, the gradient and the compressed moments once and writes the weight and the
moments once: 16 bytes per parameter with FP8 moments (4 + 4 weight, 4 gradient, 2 x (1 + 1)
codes, and two fp32 scales per 128), 20 with bf16, where torch's fused fp32 AdamW moves 28.

It computes what the torch path computes, in the same order and with the same rules, so the
two round the same way up to fp32 rounding:

* AdamW: torch.lerp's formula for m, ``beta2 * v + (1 - beta2) * g * g``, the decoupled
  decay, then ``-lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)`` with ``bc = 1 - beta^step``.
* FP8 moments: per block of ``block_size`` elements, the scale is the least power of two s
  with amax / s <= the format's max (`models.compressed_adam.block_scales`), the values are
  rounded stochastically onto the format's grid (`_round_stochastically` there) with the noise
  of `hashed_uniform` (same positions in the padded layout, same step and salt: bit-equal),
  and cast saturating. Elements past the parameter's end, the last block's padding, are zero.
* bf16 moments: rounded stochastically onto bf16's grid, with the same hashed noise.

What may differ is fp32 rounding: FMA contraction in the moments' update, and the weight's
update takes the fast sqrt and division (the weights tolerate an ulp; no moment depends on
them). A moment element that lands within an ulp of a stochastic rounding threshold can
round the other way: rarely (tests/kernels/test_adam_triton_gpu.py bounds it).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kernels.formats import FP8_DTYPES
from kernels.triton_casts import _saturate
from kernels.triton_launch import check_device

# Elements per program: memory bound at 16 bytes an element, a program only has to keep
# enough loads in flight; 8 blocks of 128 over 4 warps is 8 elements a thread, few enough
# registers for the ~10 live values of each, and a 4096 x 4096 weight still gets 16k programs.
ELEMENTS_PER_PROGRAM = 1024
NUM_WARPS = 4


@triton.jit
def _exp2i(exponent):
    # 2^exponent as fp32, exact, for an int32 exponent in [-126, 127]: the exponent's bits.
    return ((exponent + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _binade(x):
    # floor(log2(x)) of a positive normal fp32 x, from its exponent bits (-127 for 0).
    return ((x.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127


@triton.jit
def hashed_uniform(position, step, salt):
    """`models.compressed_adam.hashed_uniform` at ``position`` (int) for ``step`` (fp32) and
    ``salt``: murmur3's finaliser in uint32 arithmetic, whose wrap-around is the reference's
    ``& 0xFFFFFFFF``, so the noise is bit-equal."""
    h = (
        position.to(tl.uint32)
        + step.to(tl.uint32) * 0x9E3779B9
        + tl.cast(salt, tl.uint32) * 0x632BE5AB
    )
    h = (h ^ (h >> 16)) * 0x85EBCA6B
    h = (h ^ (h >> 13)) * 0xC2B2AE35
    h = h ^ (h >> 16)
    return (h >> 8).to(tl.float32) * 5.9604644775390625e-08  # 24 bits * 2^-24: in [0, 1)


@triton.jit
def _scale_exponent(amax, FP8_MAX: tl.constexpr):
    # log2 of the least power of two s with amax / s <= FP8_MAX, as `block_scales` rounds it:
    # the ratio correctly rounded (div_rn, as torch divides), then up to a power of two unless
    # it is one; 2^-126 for zero or subnormal ratios (an all-zero block).
    ratio = tl.math.div_rn(amax, tl.full(amax.shape, FP8_MAX, tl.float32))
    bits = ratio.to(tl.int32, bitcast=True)
    exponent = ((bits >> 23) & 0xFF) - 127 + ((bits & 0x7FFFFF) != 0).to(tl.int32)
    return tl.maximum(exponent, -126)


@triton.jit
def _round_stochastically(x, noise, MANTISSA_BITS: tl.constexpr, MIN_EXPONENT: tl.constexpr):
    # `models.compressed_adam._round_stochastically` with integer exponents: the spacing at |x|
    # is 2^(floor(log2|x|) - MANTISSA_BITS), with the least normal binade's among subnormals.
    # Every product is by a power of two, exact, so for the same x and noise the result is
    # the same bits.
    magnitude = tl.abs(x)
    spacing = tl.maximum(_binade(magnitude), MIN_EXPONENT) - MANTISSA_BITS
    scaled = magnitude * _exp2i(-spacing)
    below = tl.floor(scaled)
    rounded = (below + tl.where(scaled - below + noise >= 1.0, 1.0, 0.0)) * _exp2i(spacing)
    return tl.where(x < 0, -rounded, rounded)


@triton.jit
def _round_to_bf16_stochastically(x, noise):
    # The same rounding for bf16, on the bits: its grid is fp32's with the low 16 mantissa
    # bits zero, so adding the noise's top 16 bits carries into bit 16 exactly when the
    # dropped fraction plus the noise reaches one spacing (the fraction is a multiple of
    # 2^-16, so the noise's lower 8 bits cannot decide it): the general formula's result for
    # the same noise, without its 2^-spacing, which overflows below 2^-119.
    bits = x.to(tl.int32, bitcast=True) + (noise * 65536.0).to(tl.int32)
    return (bits & -65536).to(tl.float32, bitcast=True)


@triton.jit
def _load_moment(codes_ptr, scale_ptr, offs, blocks, mask, block_mask, FP8: tl.constexpr):
    x = tl.load(codes_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if FP8:
        x = x * tl.load(scale_ptr + blocks, mask=block_mask, other=1.0)[:, None]
    return x


@triton.jit
def _store_moment(
    x,
    codes_ptr,
    scale_ptr,
    offs,
    blocks,
    mask,
    block_mask,
    step,
    salt,
    FP8: tl.constexpr,
    FP8_MAX: tl.constexpr,
    MANTISSA_BITS: tl.constexpr,
    MIN_EXPONENT: tl.constexpr,
):
    noise = hashed_uniform(offs, step, salt)
    if FP8:
        exponent = _scale_exponent(tl.max(tl.abs(x), axis=1), FP8_MAX)  # (BLOCKS,)
        scaled = x * _exp2i(-exponent)[:, None]
        codes = _round_stochastically(scaled, noise, MANTISSA_BITS, MIN_EXPONENT)
        # The whole block, padding included (zero there, as in the torch path).
        tl.store(
            codes_ptr + offs,
            _saturate(codes, FP8_MAX).to(codes_ptr.dtype.element_ty),
            mask=block_mask[:, None],
        )
        tl.store(scale_ptr + blocks, _exp2i(exponent), mask=block_mask)
    else:  # bf16: onto its grid stochastically, so the cast after it is exact
        codes = _round_to_bf16_stochastically(x, noise)
        tl.store(codes_ptr + offs, codes.to(codes_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["salt"])
def adamw_kernel(
    # Pointers: the fp32 weight and its gradient (any float dtype), contiguous; the moments
    # m and v: FP8 codes (blocks, BLOCK) with one fp32 scale per block, or bf16 like the
    # weight; the step count (0-d fp32, this step's); the LR, a 0-d fp32 tensor when
    # LR_IS_TENSOR, else its value
    weight_ptr,
    grad_ptr,
    m_ptr,
    m_scale_ptr,
    v_ptr,
    v_scale_ptr,
    step_ptr,
    lr,
    # Size of the weight
    numel,
    # AdamW's hyperparameters; 1 - beta1 and 1 - beta2 as the torch path rounds them (in
    # float64, then to fp32)
    beta1,
    beta2,
    one_minus_beta1,
    one_minus_beta2,
    eps,
    weight_decay,
    # The stochastic rounding's salt for m; v's is salt + 1
    salt,
    # Meta-parameters. FP8: the moments are FP8 codes and scales (else bf16); each FP8
    # format's largest value, mantissa bits and least normal exponent
    FP8: tl.constexpr,
    M_MAX: tl.constexpr,
    M_MANTISSA_BITS: tl.constexpr,
    M_MIN_EXPONENT: tl.constexpr,
    V_MAX: tl.constexpr,
    V_MANTISSA_BITS: tl.constexpr,
    V_MIN_EXPONENT: tl.constexpr,
    LR_IS_TENSOR: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCKS: tl.constexpr,
):
    pid = tl.program_id(axis=0).to(tl.int64)  # int64: a (16384, 32768) tensor exceeds 2**31
    blocks = pid * BLOCKS + tl.arange(0, BLOCKS)  # (BLOCKS,)
    offs = blocks[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]  # (BLOCKS, BLOCK), padded
    mask = offs < numel
    block_mask = blocks < tl.cdiv(numel, BLOCK)

    step = tl.load(step_ptr)
    if LR_IS_TENSOR:
        lr = tl.load(lr)
    # beta^step in float64: 1 - beta^step cancels (1 - 0.999 at step 1), so the power must be
    # right to fp32's last bit, as the torch path's powf is; fp32 exp2 and log2 are not.
    step64 = step.to(tl.float64)
    bias_correction1 = 1 - tl.exp2(step64 * tl.log2(tl.cast(beta1, tl.float64))).to(tl.float32)
    bias_correction2 = 1 - tl.exp2(step64 * tl.log2(tl.cast(beta2, tl.float64))).to(tl.float32)
    bias_correction2_sqrt = tl.sqrt_rn(bias_correction2)

    grad = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    m = _load_moment(m_ptr, m_scale_ptr, offs, blocks, mask, block_mask, FP8)
    v = _load_moment(v_ptr, v_scale_ptr, offs, blocks, mask, block_mask, FP8)
    # torch.lerp(m, grad, 1 - beta1): its formula for weights below 0.5, and above.
    m = tl.where(
        one_minus_beta1 < 0.5,
        m + one_minus_beta1 * (grad - m),
        grad - (grad - m) * (1 - one_minus_beta1),
    )
    v = v * beta2 + one_minus_beta2 * grad * grad

    weight = tl.load(weight_ptr + offs, mask=mask)
    weight = weight * (1 - lr * weight_decay)
    denom = tl.sqrt(v) / bias_correction2_sqrt + eps
    weight += m / denom * (-lr / bias_correction1)
    tl.store(weight_ptr + offs, weight, mask=mask)

    _store_moment(m, m_ptr, m_scale_ptr, offs, blocks, mask, block_mask, step, salt,
                  FP8, M_MAX, M_MANTISSA_BITS, M_MIN_EXPONENT)  # fmt: skip
    _store_moment(v, v_ptr, v_scale_ptr, offs, blocks, mask, block_mask, step, salt + 1,
                  FP8, V_MAX, V_MANTISSA_BITS, V_MIN_EXPONENT)  # fmt: skip


def _format_meta(prefix: str, dtype: torch.dtype) -> dict[str, float | int]:
    """A moment format's constants for the kernel: largest value, mantissa bits, least normal
    exponent (bf16's too, unused there, so that both formats launch alike)."""
    info = torch.finfo(dtype)
    return {
        f"{prefix}_MAX": float(info.max),
        f"{prefix}_MANTISSA_BITS": round(-math.log2(info.eps)),
        f"{prefix}_MIN_EXPONENT": round(math.log2(info.smallest_normal)),
    }


def adamw_step(
    weight: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: torch.Tensor,
    *,
    lr: float | torch.Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    salt: int,
    exp_avg_scale: torch.Tensor | None = None,
    exp_avg_sq_scale: torch.Tensor | None = None,
) -> None:
    """One AdamW step of ``weight`` and its moments, all in place, in one kernel.

    ``weight``: fp32, contiguous, any shape. ``grad``: its gradient, any float dtype.
    ``exp_avg``/``exp_avg_sq``: bf16 (shaped like ``weight``), or FP8 codes (blocks,
    block_size) with their fp32 ``*_scale`` (blocks, 1), as `CompressedAdamW` keeps them.
    ``step``: the 0-d fp32 step count, already counting this step; ``lr`` a float or a 0-d
    fp32 tensor (read on the device: no host sync, capturable in a CUDA graph). ``salt``: the
    stochastic rounding's for m (2 * the parameter's index); v's is ``salt + 1``.
    """
    scales = (exp_avg_scale, exp_avg_sq_scale)
    lr_tensors = (lr,) if isinstance(lr, torch.Tensor) else ()
    moment_scales = tuple(s for s in scales if s is not None)
    check_device(weight, grad, exp_avg, exp_avg_sq, step, *moment_scales, *lr_tensors)
    if weight.dtype != torch.float32 or not weight.is_contiguous():
        raise ValueError(f"weight must be contiguous fp32, got {weight.dtype}")
    if grad.shape != weight.shape:
        raise ValueError(f"grad shape {tuple(grad.shape)} != weight's {tuple(weight.shape)}")
    fp8 = exp_avg.dtype in FP8_DTYPES
    numel = weight.numel()
    if fp8:
        if exp_avg_sq.dtype not in FP8_DTYPES or len(moment_scales) != 2:
            raise ValueError("FP8 moments take two FP8 code tensors and both their scales")
        block = exp_avg.shape[-1]
        blocks = (triton.cdiv(numel, block), block)
        if block & (block - 1) or {tuple(exp_avg.shape), tuple(exp_avg_sq.shape)} != {blocks}:
            raise ValueError(f"FP8 codes must be {blocks}, blocks of a power of two")
    else:
        if {exp_avg.dtype, exp_avg_sq.dtype} != {torch.bfloat16} or moment_scales:
            raise ValueError("moments must be FP8 codes with scales, or bf16 without")
        if exp_avg.shape != weight.shape or exp_avg_sq.shape != weight.shape:
            raise ValueError("bf16 moments must be shaped like the weight")
        block = 128  # bf16 has no blocks: only the tiling uses it
    if numel == 0:
        return
    blocks_per_program = max(1, ELEMENTS_PER_PROGRAM // block)
    grid = (triton.cdiv(triton.cdiv(numel, block), blocks_per_program),)
    # Without scales (bf16) the scale pointers are never read: pass the step's.
    m_scale, v_scale = exp_avg_scale, exp_avg_sq_scale
    adamw_kernel[grid](
        weight,
        grad.contiguous(),
        exp_avg,
        m_scale if m_scale is not None else step,
        exp_avg_sq,
        v_scale if v_scale is not None else step,
        step,
        lr,
        numel,
        beta1,
        beta2,
        1 - beta1,
        1 - beta2,
        eps,
        weight_decay,
        salt,
        FP8=fp8,
        **_format_meta("M", exp_avg.dtype),
        **_format_meta("V", exp_avg_sq.dtype),
        LR_IS_TENSOR=isinstance(lr, torch.Tensor),
        BLOCK=block,
        BLOCKS=blocks_per_program,
        num_warps=NUM_WARPS,
    )
