"""The two FP8 formats of the µS linear layer and their ranges, named once for the package.

e4m3fn carries activations and weights (more mantissa), e5m2 the gradients (more range).
Both the emulation (`kernels.fp8`) and the Triton kernels import them from here: a leaf
module, so that neither has to import the other to name a dtype.
"""

from __future__ import annotations

import torch

E4M3 = torch.float8_e4m3fn
E5M2 = torch.float8_e5m2
E4M3_MAX = torch.finfo(E4M3).max  # 448.0
E5M2_MAX = torch.finfo(E5M2).max  # 57344.0
FP8_DTYPES = (E4M3, E5M2)
