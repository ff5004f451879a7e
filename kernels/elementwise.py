"""The elementwise math of the µS FP8 linear layer in plain torch: the saturating cast and
the exact GELU (with its derivative) that the cast may apply first.

The emulation (`kernels.fp8`) computes with these, and so does the Triton path under
``torch.compile`` (`kernels.ops`): there the casts are traced as these ops rather than
called as opaque kernels, so that inductor fuses each into the kernel that produces its
input (a norm and residual, a GELU, a gradient), and an FP8 copy costs no pass of its own.
A leaf module: `kernels.fp8` dispatches to `kernels.ops`, and both need these.
"""

from __future__ import annotations

import torch


def saturating_cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round ``x`` to ``dtype`` (e4m3fn or e5m2), clamping out-of-range values to ±max.

    torch's plain cast turns overflow into NaN (e4m3fn has no inf) or inf (e5m2); training
    without dynamic scales must saturate instead. NaN inputs stay NaN.
    """
    limit = torch.finfo(dtype).max
    return x.float().clamp(-limit, limit).to(dtype)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU, x * Phi(x), in fp32: the activation `fp8_linear` can apply to its input.

    Phi is `torch.special.ndtr`, not ``0.5 * (1 + erf(x / sqrt(2)))``: on some CPUs torch's
    vectorised erf is accurate only to ~1e-5 absolute, which the ``1 + erf`` cancellation turns
    into a 10% error in the negative tail; ndtr takes erfc there.
    """
    x = x.float()
    return x * torch.special.ndtr(x)


def gelu_grad(x: torch.Tensor) -> torch.Tensor:
    """d GELU / dx in fp32: Phi(x) + x phi(x)."""
    x = x.float()
    return torch.special.ndtr(x) + x * torch.exp(-0.5 * x * x) * 0.3989422804014327
