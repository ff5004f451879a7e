"""What every Triton FP8 wrapper does before and around a launch: the device check, the FP8
range of the output dtype, and the launch with a given, a fixed or a tuned config.

The wrappers (`kernels.triton_casts`, `kernels.triton_gemm`) accept CPU tensors only under
``TRITON_INTERPRET=1``: Triton's CPU interpreter, which is how CI runs the kernels. It cannot
time configs, so there each kernel runs a fixed small tile instead of a tuned one.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import torch

from kernels.formats import FP8_DTYPES
from kernels.tuning import Key, Tuner

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

Meta = dict[str, Any]  # a config's meta-parameters, num_warps and num_stages, as launch kwargs


class Launch(Protocol):
    """Runs a kernel with a config's ``meta``; with ``warmup=True`` it only compiles it (as
    Triton's ``JITFunction.run`` does), so a tuner can compile its candidates at once."""

    def __call__(self, meta: Meta, /, *, warmup: bool = False) -> None: ...


def check_device(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.device.type == "cpu" and not INTERPRET:
            raise ValueError("Triton FP8 kernels need CUDA tensors (or TRITON_INTERPRET=1 on CPU)")


def fp8_max(dtype: torch.dtype) -> float:
    """The largest finite value of FP8 ``dtype``: where the saturating casts clamp."""
    if dtype not in FP8_DTYPES:
        raise ValueError(f"FP8 dtype must be one of {FP8_DTYPES}, got {dtype}")
    return float(torch.finfo(dtype).max)


def launch_tuned(
    tuner: Tuner,
    key: Key,
    launch: Launch,
    config: Meta | None,
    *,
    interpreter_config: Meta,
) -> None:
    """``launch`` with ``config`` if given, else ``interpreter_config`` under the interpreter
    (it cannot time configs), else with ``tuner``'s choice for ``key``."""
    if config is None and INTERPRET:
        config = interpreter_config
    if config is None:
        config = tuner.config(
            key,
            lambda c: launch(c.all_kwargs()),
            compile=lambda c: launch(c.all_kwargs(), warmup=True),
        ).all_kwargs()
    launch(config)
