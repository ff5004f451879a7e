"""Training replayed from CUDA graphs against eager training, and the warm start, on a GPU.

Stated tolerance: a graphed run's train and eval losses match the eager run's to 2e-3
relative at every report. The graphs replay the eager kernels in the same order; what
differs is the optimizer's learning rate, a float32 GPU tensor that the schedule fills
(eager: a Python float), so the updates differ by float32 rounding and the curves drift
apart by about that much over the steps. The weights' FP8 work on a side stream (on in the
graphs, `kernels.overlap`) changes no number at all: its runs match the same graphs
without it exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import ModelConfig, TrainConfig
from models.data import Batches, split_corpus
from models.optim import build_optimizer
from models.steps import steps_for
from models.train import Parallel, build_model, train

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU (the CPU trains eagerly)", allow_module_level=True)

LOSS_RTOL = 2e-3


def config(parametrization: str, precision: str, *, graphs: bool) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(
            width=256, depth=2, head_dim=64, seq_len=128, parametrization=parametrization
        ),
        data="stdlib",
        steps=40,
        batch_size=16,
        precision=precision,
        lr=2**-5 if parametrization == "mus" else 2**-9,
        eval_interval=10,
        eval_batches=2,
        device="cuda",
        cuda_graphs=graphs,
    )


@pytest.mark.parametrize(
    ("parametrization", "precision"), [("mus", "fp8"), ("mus", "bf16"), ("sp", "bf16")]
)
def test_graphed_training_matches_eager(parametrization: str, precision: str) -> None:
    eager = train(config(parametrization, precision, graphs=False))
    graphed = train(config(parametrization, precision, graphs=True))
    assert eager.status == graphed.status == "completed"
    assert [p.step for p in graphed.curve] == [p.step for p in eager.curve] == [10, 20, 30, 40]
    for e, g in zip(eager.curve, graphed.curve, strict=True):
        assert g.train_loss == pytest.approx(e.train_loss, rel=LOSS_RTOL), (e, g)
        assert g.eval_loss == pytest.approx(e.eval_loss, rel=LOSS_RTOL), (e, g)
    # the schedule reached the graph: a frozen LR would leave the loss far from eager's
    assert graphed.curve[-1].eval_loss < graphed.curve[0].eval_loss


def _graphed_losses(run: TrainConfig, *, overlap: bool) -> tuple[list[float], torch.Tensor]:
    """Train and eval losses of each step of ``run`` and its final weights, graphed."""
    model = build_model(run, torch.device("cuda"))
    optimizer, scheduler = build_optimizer(model, run, capturable=True)
    steps = steps_for(model, optimizer, scheduler, run, graphed=True, overlap=overlap)
    batches = Batches(split_corpus(run.data)[0], batch_size=run.batch_size, seq_len=128, seed=0)
    losses = []
    for step in range(run.steps):
        batch = batches.next("cuda")
        losses.append(steps.train(batch).item())
        if step + 1 == steps.warmup_steps:
            steps.warmed_up(batch)
        losses.append(steps.eval_loss(batch).item())
    return losses, torch.cat([p.detach().flatten() for p in model.parameters()])


def test_the_weights_work_beside_the_activations_changes_no_number() -> None:
    """Weight casts and weight gradients on a side stream: the same kernels on the same
    inputs, so the same losses and weights to the bit, eager steps and replays alike."""
    run = config("mus", "fp8", graphs=True).model_copy(update={"steps": 12})
    beside, beside_weights = _graphed_losses(run, overlap=True)
    alone, alone_weights = _graphed_losses(run, overlap=False)
    assert beside == alone
    assert torch.equal(beside_weights, alone_weights)
    assert beside[-1] < beside[0]  # it trained


@pytest.mark.parametrize("optimizer_state", ["bf16", "fp8"])
def test_graphed_training_with_compressed_moments_matches_eager(optimizer_state: str) -> None:
    """`CompressedAdamW`'s step (no host syncs, state written in place) replays in the graph."""
    runs = [
        train(
            config("mus", "fp8", graphs=g).model_copy(update={"optimizer_state": optimizer_state})
        )
        for g in (False, True)
    ]
    eager, graphed = runs
    assert eager.status == graphed.status == "completed"
    for e, g in zip(eager.curve, graphed.curve, strict=True):
        assert g.eval_loss == pytest.approx(e.eval_loss, rel=LOSS_RTOL), (e, g)
    assert graphed.curve[-1].eval_loss < graphed.curve[0].eval_loss


def test_a_one_rank_run_in_a_process_group_replays_its_graphs(tmp_path: Path) -> None:
    """A launch with one worker runs in Ray Train's process group of one; its model trains
    bare (DDP's gradient hooks would break the capture) and matches a plain run."""
    torch.distributed.init_process_group(
        "nccl", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1
    )
    try:
        ddp = Parallel(0, 1, lambda m: torch.nn.parallel.DistributedDataParallel(m, [0]))
        launched = train(config("mus", "fp8", graphs=True), parallel=ddp)
    finally:
        torch.distributed.destroy_process_group()
    plain = train(config("mus", "fp8", graphs=True))
    assert launched.status == plain.status == "completed"
    for p, q in zip(plain.curve, launched.curve, strict=True):
        assert q.eval_loss == pytest.approx(p.eval_loss, rel=LOSS_RTOL), (p, q)


def test_a_new_process_starts_from_the_kernel_cache(tmp_path: Path) -> None:
    """The first process tunes the FP8 kernels; the second finds every choice on disk."""
    script = """
import json, sys
from kernels.ops import TUNERS
from models import TrainConfig
from models.train import warm_up
startup = warm_up(TrainConfig.model_validate_json(sys.argv[1]))
print(json.dumps({"startup_s": startup, "tuning_s": sum(t.tuning_s for t in TUNERS)}))
"""
    env = {**os.environ, "SWEEPER_KERNEL_CACHE": str(tmp_path / "kernels")}
    arg = config("mus", "fp8", graphs=True).model_dump_json()
    runs = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", script, arg],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.splitlines()[-1]
        )
        for _ in range(2)
    ]
    cold, warm = runs
    assert cold["tuning_s"] > 0
    assert warm["tuning_s"] == 0
    assert warm["startup_s"] < cold["startup_s"]
