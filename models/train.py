"""The trainer: one run of a TrainConfig, reporting its curve as it goes.

A run ends ``completed``, or ``diverged`` when the loss turns NaN/inf or explodes: divergence
is a result the sweep records (its curve included), never an exception.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from models.config import TrainConfig
from models.data import EVAL_SEED, Batches, split_corpus
from models.gpt import GPT, default_fp8_grad_scale, use_fp8
from models.optim import build_optimizer

RunStatus = Literal["completed", "diverged"]
# A train loss this many times the untrained model's means the run blew up, finite or not.
EXPLOSION_FACTOR = 1.5


@dataclass(frozen=True)
class MetricPoint:
    """One report: the state of a run after ``step`` optimizer steps."""

    step: int
    tokens: int
    train_loss: float  # mean over the steps since the previous report
    eval_loss: float
    tokens_per_s: float  # training throughput so far, evaluation time excluded
    time_s: float  # wall time since the run started


@dataclass(frozen=True)
class TrainResult:
    status: RunStatus
    steps: int
    tokens: int
    final_eval_loss: float  # NaN when the run diverged before a finite evaluation
    tokens_per_s: float
    wall_s: float
    curve: list[MetricPoint] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The JSON-ready headline numbers (non-finite values as None)."""
        out = {k: v for k, v in asdict(self).items() if k != "curve"}
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in out.items()
        }


Reporter = Callable[[MetricPoint], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def precision_context(config: TrainConfig, device: torch.device) -> AbstractContextManager[Any]:
    """bf16 autocast for everything but fp32 runs (FP8 layers manage their own casts)."""
    if config.precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def build_model(config: TrainConfig, device: torch.device) -> GPT:
    """The model of ``config`` on ``device``, seeded, with FP8 routing when asked for."""
    torch.manual_seed(config.seed)
    model = GPT(config.model).to(device)
    if config.precision == "fp8":
        scale = config.fp8_grad_scale or default_fp8_grad_scale(
            tokens_per_step=config.tokens_per_step, width=config.model.width
        )
        use_fp8(model, grad_scale=scale)
    return model


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch: tuple[torch.Tensor, torch.Tensor],
    config: TrainConfig,
) -> torch.Tensor:
    """One optimizer step on ``batch``; returns the (unsynchronised) loss."""
    x, y = batch
    with precision_context(config, x.device):
        loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


@torch.no_grad()
def evaluate(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> float:
    """Mean validation loss over ``eval_batches`` fixed batches (the same for every run)."""
    _, val_tokens = split_corpus(config.data)
    batches = Batches(
        val_tokens, batch_size=config.batch_size, seq_len=config.model.seq_len, seed=EVAL_SEED
    )
    total = torch.zeros((), device=device)
    for _ in range(config.eval_batches):
        x, y = batches.next(device)
        with precision_context(config, device):
            total += loss_fn(model(x), y)
    return (total / config.eval_batches).item()


def train(config: TrainConfig, report: Reporter | None = None) -> TrainResult:
    """Train ``config`` to its last step or to divergence; ``report`` gets each MetricPoint."""
    started = time.perf_counter()
    device = resolve_device(config.device)
    train_tokens, _ = split_corpus(config.data)
    batches = Batches(
        train_tokens, batch_size=config.batch_size, seq_len=config.model.seq_len, seed=config.seed
    )
    model = build_model(config, device)
    optimizer, scheduler = build_optimizer(model, config)
    step_fn: torch.nn.Module = torch.compile(model) if config.compile else model  # type: ignore[assignment]

    curve: list[MetricPoint] = []
    initial_loss = math.inf  # the untrained model's loss: the yardstick of an explosion
    interval_loss = torch.zeros((), device=device)
    interval_steps, train_time = 0, 0.0
    status: RunStatus = "completed"
    step = 0
    while step < config.steps:
        t0 = time.perf_counter()
        loss = train_step(step_fn, optimizer, scheduler, batches.next(device), config)
        if step == 0:
            initial_loss = loss.item()
        interval_loss += loss
        interval_steps += 1
        step += 1
        if step % config.eval_interval and step != config.steps:
            train_time += time.perf_counter() - t0
            continue
        train_loss = (interval_loss / interval_steps).item()  # syncs: the timing is complete
        train_time += time.perf_counter() - t0
        finite = math.isfinite(train_loss) and train_loss < EXPLOSION_FACTOR * initial_loss
        eval_loss = evaluate(step_fn, config, device) if finite else math.nan
        tokens = step * config.tokens_per_step
        point = MetricPoint(
            step=step,
            tokens=tokens,
            train_loss=train_loss,
            eval_loss=eval_loss,
            tokens_per_s=tokens / train_time,
            time_s=time.perf_counter() - started,
        )
        curve.append(point)
        if report is not None:
            report(point)
        if not (finite and math.isfinite(eval_loss)):
            status = "diverged"
            break
        interval_loss.zero_()
        interval_steps = 0

    return TrainResult(
        status=status,
        steps=step,
        tokens=step * config.tokens_per_step,
        final_eval_loss=curve[-1].eval_loss,
        tokens_per_s=step * config.tokens_per_step / train_time,
        wall_s=time.perf_counter() - started,
        curve=curve,
    )
