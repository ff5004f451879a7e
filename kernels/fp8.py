"""The µS FP8 linear layer: static scales only, no amax anywhere.

Under unit scaling every operand of a hidden matmul sits near unit variance, so it fits
e4m3's range (±448) as it is. An FP8 linear layer is then nothing more than saturating casts,
a matmul with fp32 accumulation and the static ``1/sqrt(fan_in)`` on its output.

Backward: with a mean-reduced loss the gradient reaching a hidden layer is ~1/tokens, far
below e5m2's smallest subnormal (2^-16) for realistic batch sizes. The incoming gradient is
multiplied by a static ``grad_scale`` before its e5m2 cast and the product is divided by it
after the matmul, so the returned gradients are those of the unscaled loss.

This module is the numerical reference: the CPU path *is* this code, and the Triton kernels
(`kernels.triton_casts` and `kernels.triton_gemm`, through `kernels.ops`) must match it
(same casts, fp32 math). `fp8_linear` is the one dispatch point (with `fp8_gelu_mlp`, two of
them with GELU between, which the Triton side fuses into the casts), and its
backend one of:

* ``auto`` (default): Triton for CUDA tensors when Triton is importable, else the emulation;
* ``emulate``: the emulation everywhere (e.g. to compare against it on a GPU);
* ``triton``: the Triton kernels everywhere (CPU tensors only under ``TRITON_INTERPRET=1``).

Which one, first to last in precedence:

1. the environment variable ``SWEEPER_FP8_BACKEND``, where set (not empty): an override,
   e.g. to run a whole sweep on the emulation without editing its spec;
2. the run's choice, ``TrainConfig.fp8_backend``, which the trainer applies for the run
   only (`using_fp8_backend`), so that runs in one process do not leak into each other;
3. outside a run, `set_fp8_backend`, else ``auto``.

The backend is one per process (the trainer runs one model at a time), not per thread.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from typing import Any, cast

import torch
import torch.nn.functional as F

from kernels.backend import BACKENDS, Backend
from kernels.formats import E4M3, E5M2, E4M3Copies, saturating_cast

# Triton is absent on some CPU-only installs; the emulation needs none of it. Where Triton is
# installed, an error importing the kernels must surface, not silently fall back.
HAS_TRITON = importlib.util.find_spec("triton") is not None
if HAS_TRITON:
    from kernels.ops import fp8_gelu_mlp_triton, fp8_linear_triton


def _matmul_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Product of two FP8 tensors with exact fp32 operands (FP8 values are fp32-representable).

    Autocast is switched off: under a bf16 autocast region (the trainer's), ``@`` would
    otherwise round the operands' products to bf16 and stop being the reference.
    """
    with torch.autocast(a.device.type, enabled=False):
        return a.float() @ b.float()


class _FP8LinearEmulated(torch.autograd.Function):
    """``y = (e4m3(x) @ e4m3(w).T) * scale`` with e5m2 gradients, computed in fp32."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        scale: float,
        grad_scale: float,
        x8_rows: torch.Tensor | None,
    ) -> torch.Tensor:
        x8 = x8_rows.view(x.shape) if x8_rows is not None else saturating_cast(x, E4M3)
        w8 = saturating_cast(weight, E4M3)  # (N, K)
        ctx.save_for_backward(x8, w8)
        ctx.scale, ctx.grad_scale = scale, grad_scale
        ctx.x_dtype, ctx.w_dtype = x.dtype, weight.dtype
        y = _matmul_fp32(x8, w8.t()) * scale  # (..., N)
        return y.to(torch.bfloat16)

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x8, w8 = ctx.saved_tensors
        # One static factor restores gradients to near unit scale before the e5m2 cast;
        # dividing it out again after the matmul keeps the math that of the true loss.
        g8 = saturating_cast(grad_y.float() * ctx.grad_scale, E5M2)  # (..., N)
        unscale = ctx.scale / ctx.grad_scale
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = (_matmul_fp32(g8, w8) * unscale).to(ctx.x_dtype)  # (..., K)
        if ctx.needs_input_grad[1]:
            g2d, x2d = g8.reshape(-1, g8.shape[-1]), x8.reshape(-1, x8.shape[-1])
            grad_w = (_matmul_fp32(g2d.t(), x2d) * unscale).to(ctx.w_dtype)  # (N, K)
        return grad_x, grad_w, None, None, None


def fp8_linear_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    scale: float,
    grad_scale: float,
    x8: E4M3Copies | None = None,
) -> torch.Tensor:
    """The emulated FP8 linear layer (plain torch, any device); see `fp8_linear`."""
    _check_inputs(x, x8)
    rows = x8.rows if x8 is not None else None
    out: torch.Tensor = _FP8LinearEmulated.apply(x, weight, scale, grad_scale, rows)
    return out


def _check_inputs(x: torch.Tensor, x8: E4M3Copies | None) -> None:
    if x8 is None:
        return
    m, k = x.numel() // x.shape[-1], x.shape[-1]
    if x8.rows.shape != (m, k) or x8.cols.shape != (k, m):
        raise ValueError(
            f"x8 must be x's casts, ({m}, {k}) and ({k}, {m}), got {tuple(x8.rows.shape)} "
            f"and {tuple(x8.cols.shape)}"
        )


def _check_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"FP8 backend must be one of {BACKENDS}, got {name!r}")
    return cast(Backend, name)


BACKEND_ENV = "SWEEPER_FP8_BACKEND"


def _backend_from_env() -> Backend | None:
    """The environment's override (see the module docstring), None where it sets none."""
    name = os.environ.get(BACKEND_ENV)
    return _check_backend(name) if name else None


_backend: Backend = _backend_from_env() or "auto"


def set_fp8_backend(backend: Backend, *, chosen_by: str = "the caller") -> None:
    """Choose the implementation behind `fp8_linear`: ``auto``, ``triton`` or ``emulate``.

    ``chosen_by`` names where the choice came from, for the error where it cannot be met.
    """
    global _backend
    backend = _check_backend(backend)
    if backend == "triton" and not HAS_TRITON:
        raise RuntimeError(
            f"FP8 backend 'triton' asked for by {chosen_by}, but Triton cannot be imported here"
        )
    _backend = backend


@contextlib.contextmanager
def using_fp8_backend(backend: Backend, *, chosen_by: str = "the caller") -> Iterator[Backend]:
    """`fp8_linear` on ``backend`` inside the block, unless ``$SWEEPER_FP8_BACKEND`` overrides
    it; the backend from before again after, however the block ends. Yields the one in use."""
    global _backend
    backend = _check_backend(backend)
    override = _backend_from_env()
    previous = _backend
    if override is None:
        set_fp8_backend(backend, chosen_by=chosen_by)
    else:
        set_fp8_backend(override, chosen_by=f"${BACKEND_ENV}")
    try:
        yield _backend
    finally:
        _backend = previous


def fp8_backend() -> Backend:
    """The implementation `fp8_linear` uses now (see `set_fp8_backend`)."""
    return _backend


def uses_triton(x: torch.Tensor) -> bool:
    """Whether `fp8_linear` runs the Triton kernels for an input like ``x``."""
    if _backend == "auto":
        return HAS_TRITON and x.is_cuda
    return _backend == "triton"


def fp8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    scale: float,
    grad_scale: float,
    x8: E4M3Copies | None = None,
) -> torch.Tensor:
    """FP8 linear layer without bias: ``(x @ weight.T) * scale`` in e4m3/e5m2, output bf16.

    The one dispatch point: the Triton kernels on CUDA, the emulation on CPU, unless the
    backend says otherwise (see the module docstring). Works under ``torch.compile``.

    Args:
        x: activations ``(..., K)``, any float dtype.
        weight: master weights ``(N, K)``, usually fp32.
        scale: the static output multiplier (µS: ``1/sqrt(K)``).
        grad_scale: the static factor applied to the output gradient before its e5m2 cast
            and removed after the backward matmuls.
        x8: x's e4m3 casts, made ahead (`E4M3Copies`), used in place of casting x; x still
            gives the shape and receives the input gradient.
    """
    if uses_triton(x):
        _check_inputs(x, x8)
        return fp8_linear_triton(x, weight, scale=scale, grad_scale=grad_scale, x8=x8)
    return fp8_linear_reference(x, weight, scale=scale, grad_scale=grad_scale, x8=x8)


def fp8_gelu_mlp(
    x: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    *,
    scales: tuple[float, float],
    grad_scale: float,
    x8: E4M3Copies | None = None,
) -> torch.Tensor:
    """The GELU MLP ``down(GELU(up(x)))`` of two FP8 linear layers (see `fp8_linear`):
    ``scales`` are the up and down projections' output multipliers, ``grad_scale`` the
    static gradient factor of both, ``x8`` x's casts made ahead.

    On the Triton kernels GELU and the casts around it run in one pass over each GEMM's
    output (`kernels.ops.FP8GeluMLPTriton`); the reference is the two emulated layers with torch's
    GELU between them, in bf16 as the layers' outputs are.
    """
    if uses_triton(x):
        _check_inputs(x, x8)
        return fp8_gelu_mlp_triton(x, w_up, w_down, scales=scales, grad_scale=grad_scale, x8=x8)
    h = fp8_linear_reference(x, w_up, scale=scales[0], grad_scale=grad_scale, x8=x8)
    return fp8_linear_reference(F.gelu(h), w_down, scale=scales[1], grad_scale=grad_scale)
