"""How a training step and an evaluation batch run: eagerly, or replayed from CUDA graphs.

A proxy model's step is a few hundred small kernels, each launched by Python: at widths of
128-512 the GPU waits for the host most of the time, and FP8 (more kernels, each with a
host-side descriptor and config lookup) waits the longest. A CUDA graph records the whole
step once (forward, backward, the fused optimizer) and replays it with one launch, so the
step costs what its kernels cost. Shapes must be static, which a training run's are.

`EagerSteps` is the reference and the CPU path; `GraphedSteps` runs its first
``warmup_steps`` steps eagerly on a side stream (the kernels' tuning, the optimizer's state
and every lazy initialisation happen there, as CUDA graphs require), then captures one
training step and one evaluation forward on static input buffers and replays them. The
numbers are those of the eager steps: same kernels, same order.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from kernels import overlapping
from models.config import TrainConfig

Batch = tuple[torch.Tensor, torch.Tensor]


def precision_context(
    config: TrainConfig, device: torch.device, *, cache: bool = True
) -> AbstractContextManager[Any]:
    """bf16 autocast for everything but fp32 runs (FP8 layers manage their own casts).

    ``cache=False`` inside CUDA graphs: autocast's cache of cast weights would otherwise
    hand the replays the copies made during capture.
    """
    if config.precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def forward_backward(
    model: torch.nn.Module, batch: Batch, config: TrainConfig, *, overlap: bool, cache: bool = True
) -> torch.Tensor:
    """The loss of ``batch`` and its gradients, the weights' FP8 work beside the
    activations' chain where ``overlap`` (`kernels.overlapping`; all of it joined on return)."""
    x, y = batch
    with overlapping() if overlap else nullcontext():
        with precision_context(config, x.device, cache=cache):
            loss = loss_fn(model(x), y)
        loss.backward()
    return loss


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch: Batch,
    config: TrainConfig,
    *,
    overlap: bool = False,
) -> torch.Tensor:
    """One optimizer step on ``batch``; returns the (unsynchronised) loss."""
    loss = forward_backward(model, batch, config, overlap=overlap)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


class EagerSteps:
    """Every step and evaluation batch launched from Python, kernel by kernel.

    ``overlap`` runs the FP8 layers' weight work on a side stream (`kernels.overlapping`):
    it pays where the GPU, not the host, sets the pace, so `GraphedSteps` turns it on.
    """

    warmup_steps = 1  # the first step tunes and compiles kernels: not steady state

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        config: TrainConfig,
        *,
        overlap: bool = False,
    ):
        self.model, self.optimizer, self.scheduler, self.config = (
            model,
            optimizer,
            scheduler,
            config,
        )
        self.overlap = overlap

    def train(self, batch: Batch) -> torch.Tensor:
        """One optimizer step; the loss, not synchronised."""
        return train_step(
            self.model, self.optimizer, self.scheduler, batch, self.config, overlap=self.overlap
        )

    @torch.no_grad()
    def eval_loss(self, batch: Batch) -> torch.Tensor:
        """The loss on one batch, not synchronised."""
        x, y = batch
        with (
            overlapping() if self.overlap else nullcontext(),
            precision_context(self.config, x.device),
        ):
            return loss_fn(self.model(x), y)

    def warmed_up(self, batch: Batch) -> None:
        """Called once after ``warmup_steps`` steps, with a batch of the run's shape."""


class GraphedSteps(EagerSteps):
    """Steps and evaluation batches replayed from CUDA graphs after an eager warm-up.

    The optimizer must be capturable (`models.optim.build_optimizer(capturable=True)`), so
    that its step counts and learning rates are GPU tensors the graph reads at replay; the
    schedule updates them in place between replays.
    """

    warmup_steps = 3  # as torch's whole-network capture recipe: lazy state settles by then

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        config: TrainConfig,
        *,
        overlap: bool = True,
    ):
        super().__init__(model, optimizer, scheduler, config, overlap=overlap)
        self._side = torch.cuda.Stream()
        self._train_graph: torch.cuda.CUDAGraph | None = None
        self._eval_graph = torch.cuda.CUDAGraph()
        self._x = self._y = self._loss = self._eval = torch.empty(0)

    @contextmanager
    def _on_side_stream(self) -> Iterator[None]:
        # Work before the capture runs on a side stream, as CUDA graphs require, ordered
        # with the main stream both ways (the batch comes from it, the loss goes back to it).
        self._side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._side):
            yield
        torch.cuda.current_stream().wait_stream(self._side)

    def train(self, batch: Batch) -> torch.Tensor:
        if self._train_graph is None:
            with self._on_side_stream():
                return super().train(batch)
        loss = self._replay(self._train_graph, batch, self._loss)
        self.scheduler.step()  # fills the LR tensors the next replay reads
        return loss

    def eval_loss(self, batch: Batch) -> torch.Tensor:
        if self._train_graph is None:
            with self._on_side_stream():
                return super().eval_loss(batch)
        return self._replay(self._eval_graph, batch, self._eval)

    def _replay(
        self, graph: torch.cuda.CUDAGraph, batch: Batch, output: torch.Tensor
    ) -> torch.Tensor:
        """``batch`` into the static inputs, one replay, and a copy of its ``output`` (the
        next replay overwrites the static one)."""
        self._x.copy_(batch[0], non_blocking=True)
        self._y.copy_(batch[1], non_blocking=True)
        graph.replay()
        return output.clone()

    def warmed_up(self, batch: Batch) -> None:
        with self._on_side_stream():
            super().eval_loss(batch)  # the evaluation's own lazy state, before its capture
        self._x, self._y = batch[0].clone(), batch[1].clone()
        device = self._x.device
        self.optimizer.zero_grad(set_to_none=True)  # gradients are allocated in the graph
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss = forward_backward(
                self.model, (self._x, self._y), self.config, overlap=self.overlap, cache=False
            )
            self.optimizer.step()
        self._loss = loss.detach()
        with (
            torch.no_grad(),
            torch.cuda.graph(self._eval_graph),
            overlapping() if self.overlap else nullcontext(),
            precision_context(self.config, device, cache=False),
        ):
            self._eval = loss_fn(self.model(self._x), self._y)
        self._train_graph = graph


def steps_for(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    *,
    graphed: bool,
    overlap: bool | None = None,
) -> EagerSteps:
    """`GraphedSteps` when ``graphed`` (see `uses_cuda_graphs`), else `EagerSteps`;
    ``overlap`` as each kind's default unless given (benchmarks compare both)."""
    kind = GraphedSteps if graphed else EagerSteps
    if overlap is None:
        return kind(model, optimizer, scheduler, config)
    return kind(model, optimizer, scheduler, config, overlap=overlap)


def uses_cuda_graphs(config: TrainConfig, device: torch.device, *, world_size: int) -> bool:
    """Whether a run replays CUDA graphs: asked for, on a GPU, and in one process (the
    data-parallel wrappers' collectives are not captured)."""
    return config.cuda_graphs and device.type == "cuda" and world_size == 1
