"""The µS GPT and its SP baseline, the width rules, optimizer, data, trainer and coord check.

The package names the configs and presets only: they import no torch, so that the CLI, the
API and a sweep's spec validate a run without seconds of torch's import. What needs torch
is imported from its module: the model (`models.gpt.GPT`), the trainer
(`models.train.train`, `warm_up`, `TrainResult`), the coord check (`models.coord_check`).
"""

from models.config import PRESETS, ModelConfig, TrainConfig, preset

__all__ = ["PRESETS", "ModelConfig", "TrainConfig", "preset"]
