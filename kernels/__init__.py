"""FP8 numerics of the µS linear layer: saturating casts, the FP8 linear layer, its kernels.

`fp8_linear` is the one entry point the model calls: Triton kernels on CUDA, the emulation
(`fp8_linear_reference`, the numerical reference) on CPU. The Triton side is
`kernels.triton_casts` (the casts), `kernels.triton_gemm` (the GEMMs), what both launch
with (`kernels.triton_launch`, `kernels.tuning`), and `kernels.ops`, their custom ops and
the autograd Function; `kernels.overlap` runs the layers' weight work beside the
activations' chain, on a side stream. `kernels.triton_adam` is the fused AdamW step of the
compressed moments (`models.compressed_adam`). `kernels.formats` names the two FP8 dtypes.
"""

from kernels.formats import E4M3, E4M3_MAX, E5M2, E5M2_MAX, E4M3Copies
from kernels.fp8 import (
    BACKENDS,
    HAS_TRITON,
    Backend,
    fp8_backend,
    fp8_linear,
    fp8_linear_reference,
    saturating_cast,
    set_fp8_backend,
    uses_triton,
    using_fp8_backend,
)
from kernels.overlap import overlapping

__all__ = [
    "BACKENDS",
    "E4M3",
    "E4M3_MAX",
    "E5M2",
    "E5M2_MAX",
    "HAS_TRITON",
    "Backend",
    "E4M3Copies",
    "fp8_backend",
    "fp8_linear",
    "fp8_linear_reference",
    "overlapping",
    "saturating_cast",
    "set_fp8_backend",
    "uses_triton",
    "using_fp8_backend",
]
