"""FP8 numerics of the µS linear layer: saturating casts, the FP8 linear layer, its kernels.

`fp8_linear` is the one entry point the model calls: Triton kernels on CUDA, the emulation
(`fp8_linear_reference`, the numerical reference) on CPU. `kernels.triton_fp8` holds the
kernels and their launch wrappers, `kernels.ops` their custom ops and autograd Function.
"""

from kernels.fp8 import (
    BACKENDS,
    E4M3,
    E4M3_MAX,
    E5M2,
    E5M2_MAX,
    HAS_TRITON,
    Backend,
    fp8_backend,
    fp8_linear,
    fp8_linear_reference,
    saturating_cast,
    set_fp8_backend,
    uses_triton,
)

__all__ = [
    "BACKENDS",
    "E4M3",
    "E4M3_MAX",
    "E5M2",
    "E5M2_MAX",
    "HAS_TRITON",
    "Backend",
    "fp8_backend",
    "fp8_linear",
    "fp8_linear_reference",
    "saturating_cast",
    "set_fp8_backend",
    "uses_triton",
]
