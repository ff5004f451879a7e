"""The two FP8 formats of the µS linear layer, their ranges and the saturating cast to them
(the reference every FP8 path rounds as), named once for the package, and `E4M3Copies`, an
input's casts made ahead of the layer.

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


def saturating_cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round ``x`` to ``dtype`` (e4m3fn or e5m2), clamping out-of-range values to ±max.

    torch's plain cast turns overflow into NaN (e4m3fn has no inf) or inf (e5m2); training
    without dynamic scales must saturate instead. NaN inputs stay NaN.
    """
    limit = torch.finfo(dtype).max
    return x.float().clamp(-limit, limit).to(dtype)


class E4M3Copies(NamedTuple):
    """An input's e4m3 casts made ahead by the kernel that wrote it (`kernels.triton_norm`:
    the µS block's Res-Post-LN), for the FP8 layers that read it not to cast it again:
    ``saturating_cast(x, E4M3)`` as ``rows`` (M, K), the 2-D view of x, and ``cols`` (K, M),
    its transpose, contiguous (the weight gradient's operand)."""

    rows: torch.Tensor
    cols: torch.Tensor
