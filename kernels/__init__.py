"""FP8 numerics of the µS linear layer: saturating casts, the FP8 linear layer, its kernels.

`fp8_linear` is the one entry point the model calls: Triton kernels on CUDA, the emulation
(`fp8_linear_reference`, the numerical reference) on CPU. The Triton side is
`kernels.triton_casts` (the casts), `kernels.triton_gemm` (the GEMMs), what both launch
with (`kernels.triton_launch`, `kernels.tuning`), and `kernels.ops`, their custom ops and
the autograd Function; `kernels.overlap` runs the layers' weight work beside the
activations' chain, on a side stream. `kernels.triton_adam` is the fused AdamW step of the
compressed moments (`models.compressed_adam`). `kernels.formats` names the two FP8 dtypes,
`kernels.backend` the backends.

Importing the package imports no torch: `models.config` names a `Backend`, and every
command that reads a config (most never touch a tensor) would otherwise pay for torch's
import, seconds of CPU. The names below that need torch come from their modules on first
use (PEP 562's module ``__getattr__``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kernels.backend import BACKENDS, Backend

if TYPE_CHECKING:  # what `__getattr__` returns, for type checkers
    from kernels.formats import E4M3, E4M3_MAX, E5M2, E5M2_MAX, E4M3Copies, saturating_cast
    from kernels.fp8 import (
        HAS_TRITON,
        fp8_backend,
        fp8_gelu_mlp,
        fp8_linear,
        fp8_linear_reference,
        set_fp8_backend,
        uses_triton,
        using_fp8_backend,
    )
    from kernels.overlap import overlapping

# The module of each name that needs torch (the imports above, at run time).
_TORCH_MODULES = {
    "E4M3": "kernels.formats",
    "E4M3_MAX": "kernels.formats",
    "E5M2": "kernels.formats",
    "E5M2_MAX": "kernels.formats",
    "E4M3Copies": "kernels.formats",
    "HAS_TRITON": "kernels.fp8",
    "fp8_backend": "kernels.fp8",
    "fp8_gelu_mlp": "kernels.fp8",
    "fp8_linear": "kernels.fp8",
    "fp8_linear_reference": "kernels.fp8",
    "saturating_cast": "kernels.formats",
    "set_fp8_backend": "kernels.fp8",
    "uses_triton": "kernels.fp8",
    "using_fp8_backend": "kernels.fp8",
    "overlapping": "kernels.overlap",
}


def __getattr__(name: str) -> Any:
    if name not in _TORCH_MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_TORCH_MODULES[name]), name)


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
    "fp8_gelu_mlp",
    "fp8_linear",
    "fp8_linear_reference",
    "overlapping",
    "saturating_cast",
    "set_fp8_backend",
    "uses_triton",
    "using_fp8_backend",
]
