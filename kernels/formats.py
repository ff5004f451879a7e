"""The two FP8 formats of the µS linear layer and their ranges, named once for the package,
and `E4M3Copies`, an input's casts made ahead of the layer.

e4m3fn carries activations and weights (more mantissa), e5m2 the gradients (more range).
Both the emulation (`kernels.fp8`) and the Triton kernels import them from here: a leaf
module, so that neither has to import the other to name a dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

E4M3 = torch.float8_e4m3fn
E5M2 = torch.float8_e5m2
E4M3_MAX = torch.finfo(E4M3).max  # 448.0
E5M2_MAX = torch.finfo(E5M2).max  # 57344.0
FP8_DTYPES = (E4M3, E5M2)


class E4M3Copies(NamedTuple):
    """An input's e4m3 casts made ahead by the kernel that wrote it (`kernels.triton_norm`:
    the µS block's Res-Post-LN), for the FP8 layers that read it not to cast it again:
    ``saturating_cast(x, E4M3)`` as ``rows`` (M, K), the 2-D view of x, and ``cols`` (K, M),
    its transpose, contiguous (the weight gradient's operand)."""

    rows: torch.Tensor
    cols: torch.Tensor
