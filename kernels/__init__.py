"""FP8 numerics of the µS linear layer: saturating casts and the FP8 linear autograd Function."""

from kernels.fp8 import E4M3, E4M3_MAX, E5M2, E5M2_MAX, fp8_linear, saturating_cast

__all__ = ["E4M3", "E4M3_MAX", "E5M2", "E5M2_MAX", "fp8_linear", "saturating_cast"]
