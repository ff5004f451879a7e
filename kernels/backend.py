"""The names of `fp8_linear`'s backends (`kernels.fp8` chooses among them), without torch:
the run's config (`models.config.TrainConfig.fp8_backend`) validates against them in every
command that reads a config, most of which never touch a tensor."""

from __future__ import annotations

from typing import Literal, get_args

Backend = Literal["auto", "triton", "emulate"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)
