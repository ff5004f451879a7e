"""Shared fixtures: seeding, the shakespeare corpus, small configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import ModelConfig, TrainConfig, preset

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "shakespeare.txt"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shakespeare() -> str:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} is not here (../shared beside the checkout)")
    return str(SHAKESPEARE)


def debug_config(data: str, **overrides: object) -> TrainConfig:
    """A TrainConfig on the debug preset; model fields and train fields may be overridden."""
    model_fields = {k: v for k, v in overrides.items() if k in ModelConfig.model_fields}
    train_fields = {k: v for k, v in overrides.items() if k not in model_fields}
    model = ModelConfig.model_validate(preset("debug").model_dump() | model_fields)
    return TrainConfig.model_validate({"data": data, "model": model} | train_fields)
