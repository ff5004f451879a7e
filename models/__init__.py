"""The µS GPT and its SP baseline, the width rules, optimizer, data, trainer and coord check."""

from models.config import PRESETS, ModelConfig, TrainConfig, preset
from models.gpt import GPT
from models.train import MetricPoint, TrainResult, train, warm_up

__all__ = [
    "GPT",
    "PRESETS",
    "MetricPoint",
    "ModelConfig",
    "TrainConfig",
    "TrainResult",
    "preset",
    "train",
    "warm_up",
]
