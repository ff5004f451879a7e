"""AdamW with fully decoupled weight decay, per-group LRs from the width rules, and the schedule.

torch's AdamW decays ``w <- w * (1 - lr * weight_decay)``: the decay is coupled to the LR, so
changing the LR (or its width rule) changes the regularisation. The µS recipe wants
``w <- w * (1 - lambda * s_t)`` with ``s_t`` the schedule multiplier. Giving each group
``weight_decay = lambda / lr_group`` turns torch's product into exactly that, so the fused
torch implementation can be kept.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch

from models.compressed_adam import CompressedAdamW
from models.config import TrainConfig
from models.gpt import GPT


def lr_multiplier(step: int, config: TrainConfig) -> float:
    """s_t: linear warmup from 0 to 1, then cosine or linear decay to ``min_lr_ratio``."""
    warmup_steps = round(config.warmup * config.steps)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, config.steps - warmup_steps)
    if config.schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        decay = 1.0 - progress
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * decay


def param_groups(model: GPT, config: TrainConfig) -> list[dict[str, Any]]:
    """One torch param group per distinct (LR, WD) pair the width rules produce."""
    mc = config.model
    grouped: dict[tuple[str, float, float], list[torch.Tensor]] = defaultdict(list)
    for group, fan_in, param in model.parameter_groups():
        rule = mc.group_rule(group, fan_in, base_lr=config.lr, base_wd=config.wd)
        grouped[(group, rule.lr, rule.wd)].append(param)
    return [
        {"params": params, "name": group, "lr": lr, "weight_decay": wd / lr}
        for (group, lr, wd), params in grouped.items()
    ]


def build_optimizer(
    model: GPT, config: TrainConfig, *, capturable: bool = False
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the width-rule groups and the schedule that scales every group's LR by s_t.

    Its moments are kept as ``config.optimizer_state`` says: fp32 in torch's fused AdamW, or
    bf16/fp8 in `CompressedAdamW` (the same update, no host syncs, capturable as it is).

    ``capturable``: the step may be captured in a CUDA graph. Its step counts then live on
    the GPU and each group's LR is a GPU tensor that the schedule fills in place: a float LR
    would be frozen into the graph at its value during capture.
    """
    device = next(model.parameters()).device
    groups = param_groups(model, config)
    if capturable:
        for group in groups:
            group["lr"] = torch.tensor(group["lr"], device=device)
    betas = (config.beta1, config.beta2)
    optimizer: torch.optim.Optimizer
    if config.optimizer_state == "fp32":
        optimizer = torch.optim.AdamW(
            groups, betas=betas, fused=device.type == "cuda", capturable=capturable
        )
    else:
        optimizer = CompressedAdamW(groups, betas=betas, precision=config.optimizer_state)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, config)
    )
    return optimizer, scheduler
