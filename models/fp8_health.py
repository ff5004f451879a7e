"""FP8 health of a model: how many operands of its hidden layers saturate or underflow.

µS promises that unit-scaled operands fit e4m3 (forward) and, with the static gradient
scale, e5m2 (backward) without per-tensor scales. These counters check that promise on a
real batch: saturated = |value| beyond the format's max (clamped by the cast), flushed =
a non-zero value the cast turns into zero. They are kept in total and per hidden layer (a
SwiGLU's gate, up and down each by name), and `moment_health` counts the same for the Adam
moments that `CompressedAdamW` is about to compress.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kernels import E4M3, E5M2, saturating_cast
from models.compressed_adam import FP8_FORMATS, CompressedAdamW, as_blocks, block_scales
from models.config import TrainConfig
from models.gpt import GPT, ScaledLinear, hidden_linears
from models.steps import loss_fn, precision_context


@dataclass
class CastCounts:
    values: int = 0
    nonzero: int = 0
    saturated: int = 0
    flushed: int = 0

    def add(self, x: torch.Tensor, dtype: torch.dtype) -> None:
        x = x.detach().float()
        nonzero = x != 0
        self.values += x.numel()
        self.nonzero += int(nonzero.sum())
        self.saturated += int((x.abs() > torch.finfo(dtype).max).sum())
        self.flushed += int((nonzero & (saturating_cast(x, dtype).float() == 0)).sum())

    @property
    def flushed_fraction(self) -> float:
        return self.flushed / max(1, self.nonzero)


@dataclass
class LayerHealth:
    activations: CastCounts = field(default_factory=CastCounts)  # hidden-layer inputs, e4m3
    weights: CastCounts = field(default_factory=CastCounts)  # hidden weights, e4m3
    gradients: CastCounts = field(default_factory=CastCounts)  # scaled output grads, e5m2


@dataclass
class FP8Health(LayerHealth):
    """Totals over every hidden layer, and each layer's own by name."""

    layers: dict[str, LayerHealth] = field(default_factory=dict)


def measure_fp8_health(
    model: GPT, batch: tuple[torch.Tensor, torch.Tensor], config: TrainConfig
) -> FP8Health:
    """Cast counts of every hidden layer over one forward and backward pass on ``batch``.

    The model's gradients are left untouched (the pass's gradients are discarded).
    """
    health = FP8Health()
    handles = []
    for name, layer in hidden_linears(model):
        counted = (health, health.layers.setdefault(name, LayerHealth()))

        def count_forward(
            module: ScaledLinear,
            inputs: tuple[torch.Tensor, ...],
            counted: tuple[LayerHealth, ...] = counted,
        ) -> None:
            x, weight = module.fp8_operands(inputs[0])
            for counts in counted:
                counts.activations.add(x, E4M3)
                counts.weights.add(weight, E4M3)

        def count_backward(
            module: torch.nn.Module,
            _grad_in: object,
            grad_out: tuple[torch.Tensor, ...],
            counted: tuple[LayerHealth, ...] = counted,
        ) -> None:
            assert isinstance(module, ScaledLinear)
            scale = module.fp8_grad_scale or 1.0  # what the FP8 backward multiplies by
            for counts in counted:
                counts.gradients.add(grad_out[0].float() * scale, E5M2)

        handles += [
            layer.register_forward_pre_hook(count_forward),
            layer.register_full_backward_hook(count_backward),
        ]
    saved = [p.grad for p in model.parameters()]
    try:
        x, y = batch
        with precision_context(config, x.device):
            loss = loss_fn(model(x), y)
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()
        for param, grad in zip(model.parameters(), saved, strict=True):
            param.grad = grad
    return health


def moment_health(optimizer: CompressedAdamW) -> dict[str, CastCounts]:
    """Cast counts of the moments ``exp_avg`` (m) and ``exp_avg_sq`` (v) that the next step
    of ``optimizer`` will compress, from the gradients in place (call it after a backward):
    for FP8 the values divided by their block scales against e4m3 and e5m2, for bf16 the
    values against bf16. The optimizer's state is left as it is."""
    counts = {name: CastCounts() for name in FP8_FORMATS}
    for name, value in optimizer.next_moments():
        if optimizer.precision == "bf16":
            counts[name].add(value, torch.bfloat16)
            continue
        dtype = FP8_FORMATS[name]
        blocks = as_blocks(value, optimizer.block_size)
        counts[name].add(blocks / block_scales(blocks, dtype), dtype)
    return counts
