"""Coordinate check: per-layer RMS of activations at init and after k steps, across widths.

Under µS every hidden layer's input and the residual stream after every block should sit
near RMS 1 at init, at any width and depth, and k optimizer steps should not make that RMS
grow or shrink with width. Under SP the logits' scale visibly depends on width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from models.config import TrainConfig
from models.data import Batches, split_corpus
from models.gpt import GPT, hidden_linears
from models.optim import build_optimizer
from models.steps import precision_context, train_step
from models.train import build_model, resolve_device

LayerRMS = dict[str, float]


@dataclass(frozen=True)
class CoordCheck:
    widths: list[int]
    steps: int
    init: dict[int, LayerRMS]  # width -> layer name -> RMS
    trained: dict[int, LayerRMS]  # the same after `steps` optimizer steps


def _rms(t: torch.Tensor) -> float:
    return t.detach().float().pow(2).mean().sqrt().item()


@torch.no_grad()
def layer_rms(model: GPT, x: torch.Tensor, config: TrainConfig) -> LayerRMS:
    """RMS of every hidden linear layer's input, every block's output and the logits."""
    rms: LayerRMS = {}
    hooks = [
        module.register_forward_hook(
            lambda _m, inputs, _out, name=name: rms.__setitem__(f"{name}.in", _rms(inputs[0]))
        )
        for name, module in hidden_linears(model)
    ]
    block_hooks: list[torch.utils.hooks.RemovableHandle] = []
    for i, block in enumerate(model.blocks):
        block_hooks.append(
            block.register_forward_hook(
                lambda _m, _in, out, i=i: rms.__setitem__(f"blocks.{i}.out", _rms(out[0]))
            )
        )
    try:
        with precision_context(config, x.device):
            rms["logits"] = _rms(model(x))
    finally:
        for hook in hooks + block_hooks:
            hook.remove()
    return rms


def coord_check(widths: Sequence[int], base: TrainConfig, *, steps: int = 10) -> CoordCheck:
    """Measure `layer_rms` for ``base`` at each width, at init and after ``steps`` steps."""
    device = resolve_device(base.device)
    init: dict[int, LayerRMS] = {}
    trained: dict[int, LayerRMS] = {}
    train_tokens, _ = split_corpus(base.data)
    for width in widths:
        config = base.model_copy(update={"model": base.model.model_copy(update={"width": width})})
        config = TrainConfig.model_validate(config.model_dump())  # re-check width vs head_dim
        batches = Batches(
            train_tokens,
            batch_size=config.batch_size,
            seq_len=config.model.seq_len,
            seed=config.seed,
        )
        probe = batches.next(device)[0]
        model = build_model(config, device)
        init[width] = layer_rms(model, probe, config)
        optimizer, scheduler = build_optimizer(model, config)
        for _ in range(steps):
            train_step(model, optimizer, scheduler, batches.next(device), config)
        trained[width] = layer_rms(model, probe, config)
    return CoordCheck(widths=list(widths), steps=steps, init=init, trained=trained)


def plot_coord_check(result: CoordCheck, path: Path) -> None:
    """RMS vs width, one line per layer; left at init, right after the steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, table, title in (
        (axes[0], result.init, "at init"),
        (axes[1], result.trained, f"after {result.steps} steps"),
    ):
        for layer in table[result.widths[0]]:
            ax.plot(
                result.widths, [table[w][layer] for w in result.widths], marker="o", label=layer
            )
        ax.set(xscale="log", yscale="log", xlabel="width", title=title)
        ax.set_xticks(result.widths, [str(w) for w in result.widths])
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
    axes[0].set_ylabel("RMS")
    axes[1].legend(fontsize=6, ncol=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
