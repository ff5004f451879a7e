"""The trainer: one run of a TrainConfig, reporting its curve as it goes.

A run ends ``completed``, or ``diverged`` when the loss turns NaN/inf or explodes: divergence
is a result the sweep records (its curve included), never an exception.

Its first steps are startup, not training speed: they tune and compile kernels and capture
CUDA graphs (`models.steps`). Their wall time is reported as ``startup_s`` and left out of
``tokens_per_s``, which is the steady state a user compares precisions by.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from db import MetricPoint
from kernels import using_fp8_backend
from models.config import TrainConfig
from models.data import EVAL_SEED, Batches, split_corpus
from models.gpt import GPT, default_fp8_grad_scale, use_fp8
from models.optim import build_optimizer
from models.steps import EagerSteps, GraphedSteps, steps_for, uses_cuda_graphs

# Where a run stands after a report (`status_after`): "running" until it ends.
TrainStatus = Literal["running", "completed", "diverged"]
# A train loss this many times the untrained model's means the run blew up, finite or not.
EXPLOSION_FACTOR = 1.5


@dataclass(frozen=True)
class TrainResult:
    status: TrainStatus
    steps: int
    tokens: int
    final_eval_loss: float  # NaN when the run diverged before a finite evaluation
    tokens_per_s: float  # steady state, as MetricPoint's
    startup_s: float
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


def status_after(point: MetricPoint, steps: int) -> TrainStatus:
    """The trainer's status once it has reported ``point`` of a ``steps``-step run: a
    non-finite or exploded loss (reported as a NaN/None eval loss) ends it diverged. A sweep
    records it as its trial's status (what ended a run early otherwise: pruned, cancelled)."""
    if point.eval_loss is None or not math.isfinite(point.eval_loss):
        return "diverged"
    return "completed" if point.step >= steps else "running"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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


def evaluate(steps: EagerSteps, config: TrainConfig, device: torch.device) -> float:
    """Mean validation loss over ``eval_batches`` fixed batches (the same for every run)."""
    _, val_tokens = split_corpus(config.data)
    batches = Batches(
        val_tokens, batch_size=config.batch_size, seq_len=config.model.seq_len, seed=EVAL_SEED
    )
    total = torch.zeros((), device=device)
    for _ in range(config.eval_batches):
        total += steps.eval_loss(batches.next(device))
    return (total / config.eval_batches).item()


@dataclass(frozen=True)
class Parallel:
    """This process's place in a data-parallel run (`sweeper.launch` fills it from Ray Train).

    Each rank draws its own batches of ``batch_size / world_size`` sequences; ``wrap`` turns
    the model into its DDP or FSDP form; reported losses are averaged over the ranks.
    """

    rank: int
    world_size: int
    wrap: Callable[[GPT], torch.nn.Module]


@dataclass(frozen=True)
class Checkpointing:
    """Save a resumable state every ``every`` steps (at report points) and resume from one.

    ``save(point, state)`` replaces the plain report at those points, so the state and the
    metrics that go with it travel together (Ray Train's `report(metrics, checkpoint)`).
    """

    every: int
    save: Callable[[MetricPoint, dict[str, Any]], None]
    restored: dict[str, Any] | None = None


def _training_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Full (unsharded) model and optimizer state, whatever the wrapping (DDP, FSDP2)."""
    # Imported here, not with the module: every process that imports `models` (the CLI,
    # drivers, trial workers) would pay for torch.distributed.checkpoint, and few save.
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_state, optim_state = get_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    return {
        "model": model_state,
        "optimizer": optim_state,
        "scheduler": scheduler.state_dict(),
        **extra,
    }


def _mean_over_ranks(value: torch.Tensor, parallel: Parallel | None) -> torch.Tensor:
    if parallel is not None and parallel.world_size > 1:
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.AVG)
    return value


def warm_up(config: TrainConfig) -> float:
    """Tune and compile every kernel a run of ``config``'s shapes needs, capture its graphs,
    and return the seconds it took. The tuned choices land in the on-disk cache
    (`kernels.tuning`), so later processes with these shapes start warm."""
    steps = GraphedSteps.warmup_steps + 1  # through the capture and one replay
    short = config.model_copy(update={"steps": steps, "eval_interval": steps, "eval_batches": 1})
    return train(short).startup_s


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _throughput(tokens: int, seconds: float) -> float:
    """Tokens per second, NaN while no steady-state step has been timed."""
    return tokens / seconds if tokens and seconds > 0 else math.nan


def train(
    config: TrainConfig,
    report: Reporter | None = None,
    *,
    parallel: Parallel | None = None,
    checkpointing: Checkpointing | None = None,
    before_first_step: Callable[[], None] | None = None,
) -> TrainResult:
    """Train ``config`` to its last step or to divergence; ``report`` gets each MetricPoint.

    ``before_first_step`` runs once the run is built (data, model, optimizer: nothing that
    tunes a kernel), before its first step: a sweep's trial waits there for its node's
    kernel warm-up. Its time is left out of the run's clock (``startup_s``, ``time_s``)."""
    # The FP8 backend is the process's: set for this run only, restored however it ends.
    with using_fp8_backend(config.fp8_backend, chosen_by="TrainConfig.fp8_backend"):
        return _train(
            config,
            report,
            parallel=parallel,
            checkpointing=checkpointing,
            before_first_step=before_first_step,
        )


def _train(
    config: TrainConfig,
    report: Reporter | None,
    *,
    parallel: Parallel | None,
    checkpointing: Checkpointing | None,
    before_first_step: Callable[[], None] | None,
) -> TrainResult:
    started = time.perf_counter()
    device = resolve_device(config.device)
    rank, world_size = (parallel.rank, parallel.world_size) if parallel else (0, 1)
    if config.batch_size % world_size:
        raise ValueError(f"batch_size {config.batch_size} does not split over {world_size} ranks")
    train_tokens, _ = split_corpus(config.data)
    batches = Batches(
        train_tokens,
        batch_size=config.batch_size // world_size,
        seq_len=config.model.seq_len,
        seed=config.seed,
        stream=rank,
    )
    gpt = build_model(config, device)
    # One rank has nothing to synchronise, so it trains the bare model: DDP's gradient
    # hooks would break the capture of its CUDA graphs.
    model = parallel.wrap(gpt) if parallel is not None and world_size > 1 else gpt
    graphed = uses_cuda_graphs(config, device, world_size=world_size)
    # The groups come from the GPT itself, whatever wraps it.
    optimizer, scheduler = build_optimizer(gpt, config, capturable=graphed)
    step_fn: torch.nn.Module = torch.compile(model) if config.compile else model  # type: ignore[assignment]

    curve: list[MetricPoint] = []
    initial_loss = math.inf  # the untrained model's loss: the yardstick of an explosion
    step, steady_steps, steady_time = 0, 0, 0.0
    if checkpointing is not None and checkpointing.restored is not None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        state = checkpointing.restored
        set_state_dict(
            model,
            optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
            options=StateDictOptions(full_state_dict=True),
        )
        scheduler.load_state_dict(state["scheduler"])
        step, initial_loss = state["step"], state["initial_loss"]
        steady_steps, steady_time = state["steady_steps"], state["steady_time"]
        curve = [MetricPoint(**p) for p in state["curve"]]
        batches.index = step
    steps = steps_for(step_fn, optimizer, scheduler, config, graphed=graphed)
    warmup_until = min(config.steps, step + steps.warmup_steps)  # a resumed process warms up too
    startup_s = math.nan
    clock: float | None = None  # start of the current steady-state stretch
    interval_loss = torch.zeros((), device=device)
    interval_steps = 0
    if before_first_step is not None:
        waited = time.perf_counter()
        before_first_step()
        started += time.perf_counter() - waited  # the caller's wait, not this run's startup
    while step < config.steps:
        batch = batches.next(device)
        loss = steps.train(batch)
        if step == 0:
            initial_loss = _mean_over_ranks(loss.clone(), parallel).item()
        interval_loss += loss
        interval_steps += 1
        step += 1
        if clock is not None:
            steady_steps += 1
        if step == warmup_until:
            steps.warmed_up(batch)
            _synchronize(device)
            clock = time.perf_counter()
            startup_s = clock - started
        if step % config.eval_interval and step != config.steps:
            continue
        # .item() syncs, so the stretch's timing is complete
        train_loss = _mean_over_ranks(interval_loss / interval_steps, parallel).item()
        if clock is not None:
            steady_time += time.perf_counter() - clock
        finite = math.isfinite(train_loss) and train_loss < EXPLOSION_FACTOR * initial_loss
        eval_loss = evaluate(steps, config, device) if finite else math.nan
        point = MetricPoint(
            step=step,
            tokens=step * config.tokens_per_step,
            train_loss=train_loss,
            eval_loss=eval_loss,
            tokens_per_s=_throughput(steady_steps * config.tokens_per_step, steady_time),
            time_s=time.perf_counter() - started,
            startup_s=startup_s,
        )
        curve.append(point)
        if checkpointing is not None and step % checkpointing.every == 0 and finite:
            extra = {
                "step": step,
                "steady_steps": steady_steps,
                "steady_time": steady_time,
                "initial_loss": initial_loss,
                "curve": [asdict(p) for p in curve],
            }
            checkpointing.save(point, _training_state(model, optimizer, scheduler, extra))
        elif report is not None:
            report(point)
        if status_after(point, config.steps) == "diverged":
            break
        interval_loss.zero_()
        interval_steps = 0
        if clock is not None:
            clock = time.perf_counter()  # evaluation and reporting are not training time

    return TrainResult(
        status=status_after(curve[-1], config.steps),
        steps=step,
        tokens=step * config.tokens_per_step,
        final_eval_loss=math.nan if curve[-1].eval_loss is None else curve[-1].eval_loss,
        tokens_per_s=_throughput(steady_steps * config.tokens_per_step, steady_time),
        startup_s=startup_s,
        wall_s=time.perf_counter() - started,
        curve=curve,
    )
