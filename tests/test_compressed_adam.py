"""AdamW with bf16 and FP8 moments against torch's AdamW with fp32 moments.

Stated tolerances: one step from a fresh state matches torch's AdamW to float32 rounding
(1e-6 relative, 1e-6 of the LR absolute: the update uses the fp32 moments before they are
compressed); 100 training steps end within 1%
of fp32 moments' eval loss; saving and resuming reproduces the uninterrupted curve exactly.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pydantic import ValidationError

from models import TrainConfig
from models.compressed_adam import (
    BLOCK_SIZE,
    CompressedAdamW,
    _round_stochastically,
    dequantize,
    hashed_uniform,
    moment_bytes_per_param,
    quantize,
)
from models.data import Batches, split_corpus
from models.optim import build_optimizer
from models.steps import train_step
from models.train import Checkpointing, MetricPoint, build_model, train
from sweeper.spec import SweepSpec
from tests.conftest import SHAKESPEARE, debug_config, tiny_sweep

COMPRESSED = ("bf16", "fp8")


@pytest.mark.parametrize("state", COMPRESSED)
def test_one_step_matches_torch_adamw(shakespeare, state):
    """Every width-rule group (its own LR and decoupled WD) moves as torch's AdamW moves it."""
    config = debug_config(shakespeare, precision="fp32", wd=0.1, warmup=0.0)
    batch = Batches(split_corpus(shakespeare)[0], batch_size=8, seq_len=64, seed=0).next()
    weights = {}
    for optimizer_state in ("fp32", state):
        run = config.model_copy(update={"optimizer_state": optimizer_state})
        model = build_model(run, torch.device("cpu"))
        optimizer, scheduler = build_optimizer(model, run)
        assert isinstance(optimizer, CompressedAdamW) == (optimizer_state != "fp32")
        train_step(model, optimizer, scheduler, batch, run)
        weights[optimizer_state] = [p.detach().clone() for p in model.parameters()]
    initial = [p.detach() for p in build_model(config, torch.device("cpu")).parameters()]
    for before, ref, got in zip(initial, weights["fp32"], weights[state], strict=True):
        assert (ref - before).abs().max() > 1e-4  # the step moved the weights
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6 * config.lr)


@pytest.fixture(scope="module")
def trajectories(shakespeare):
    """The same 100-step µS run with each moment precision (fp32 matmuls: the moments are
    what differs, and the FP8 emulation would triple the time)."""
    return {
        state: train(
            debug_config(
                shakespeare,
                precision="fp32",
                optimizer_state=state,
                steps=100,
                batch_size=16,
                eval_interval=50,
            )
        )
        for state in ("fp32", *COMPRESSED)
    }


@pytest.mark.parametrize("state", COMPRESSED)
def test_compressed_moments_train_within_1_percent_of_fp32(trajectories, state):
    reference, run = trajectories["fp32"], trajectories[state]
    assert run.status == reference.status == "completed"
    assert run.final_eval_loss < reference.curve[0].eval_loss  # it kept learning
    assert run.final_eval_loss == pytest.approx(reference.final_eval_loss, rel=0.01)


@pytest.mark.parametrize("state", COMPRESSED)
def test_resume_from_a_checkpoint_continues_the_same_curve(shakespeare, state):
    config = debug_config(
        shakespeare, optimizer_state=state, steps=30, batch_size=4, eval_interval=10
    )
    saved: dict[int, dict[str, Any]] = {}

    def save(point: MetricPoint, state: dict[str, Any]) -> None:
        # a copy, as torch.save makes: on CPU the state's tensors are the live ones
        saved[point.step] = copy.deepcopy(state)

    whole = train(config, checkpointing=Checkpointing(10, save))
    resumed = train(config, checkpointing=Checkpointing(10, lambda p, s: None, saved[20]))
    assert [p.train_loss for p in resumed.curve] == [p.train_loss for p in whole.curve]
    assert resumed.final_eval_loss == whole.final_eval_loss


def test_fp8_codes_and_scales_round_trip_exactly():
    """Compressing decompressed moments gives back the same values (power-of-two scales)."""
    x = torch.randn(3, 300) * torch.logspace(-8, 0, 300)  # decades apart, a partial last block
    for dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        codes, scales = quantize(x, dtype, BLOCK_SIZE)
        assert codes.dtype == dtype and codes.shape == (8, BLOCK_SIZE) and scales.shape == (8, 1)
        assert torch.equal(torch.log2(scales), torch.log2(scales).round())
        once = dequantize(codes, scales, x)
        assert torch.equal(dequantize(*quantize(once, dtype, BLOCK_SIZE), x), once)
        # every block's largest value lands in the top binade of the format: no wasted range
        top = (codes.float().abs().amax(dim=1) / torch.finfo(dtype).max).min()
        assert 0.5 <= top <= 1.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2])
def test_stochastic_rounding_lands_on_a_neighbour_and_is_unbiased(dtype):
    """Each value goes to one of the two grid points around it, the upper one with the
    probability that makes the mean exact (subnormals and zero included); and a moment
    moved by less than half a spacing a step gets there, where rounding to nearest stays."""
    info = torch.finfo(dtype)
    x = torch.tensor([1.2345, -0.7071, 3.1e-3, info.smallest_normal / 3, -info.tiny * 1.5, 0.0])
    draws = 4096
    noise = hashed_uniform(draws * x.numel(), torch.tensor(7.0), 3, x.device)
    rounded = _round_stochastically(x.expand(draws, -1), dtype, noise.view(draws, -1))
    assert torch.equal(rounded.to(dtype).float(), rounded)  # on the grid: the cast is exact
    for value, column in zip(x.tolist(), rounded.T, strict=True):
        points = column.unique()
        spacing = info.eps * max(abs(value), info.smallest_normal)
        assert len(points) <= 2 and (points - value).abs().max() <= spacing
        # a two-point draw's standard error is at most half their distance / sqrt(draws)
        distance = (points.max() - points.min()).item()
        assert abs(column.mean().item() - value) <= 4 * distance / 2 / draws**0.5
    rate, steps = info.eps / 4, 200  # v += rate * (2 - v): below half a spacing at v = 1
    to_nearest = stochastic = torch.ones(draws)
    for step in range(steps):
        to_nearest = ((1 - rate) * to_nearest + 2 * rate).to(dtype).float()
        noise = hashed_uniform(draws, torch.tensor(float(step)), 0, x.device)
        stochastic = _round_stochastically((1 - rate) * stochastic + 2 * rate, dtype, noise)
    exact = 2 - (1 - rate) ** steps
    assert torch.equal(to_nearest, torch.ones(draws))  # stuck
    assert abs(stochastic.mean().item() - exact) < 0.05 * (exact - 1)


def test_state_dict_holds_fp32_moments_shaped_like_the_parameters():
    weight = torch.nn.Parameter(torch.randn(16, 200))
    optimizer = CompressedAdamW([weight], lr=0.01, precision="fp8")
    weight.grad = torch.randn_like(weight)
    optimizer.step()
    state = optimizer.state_dict()["state"][0]
    assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
    assert state["exp_avg"].dtype == torch.float32 and state["exp_avg"].shape == weight.shape
    # what a fp32 AdamW checkpoint holds loads too: the same form
    reference = torch.optim.AdamW([torch.nn.Parameter(weight.detach().clone())], lr=0.01)
    reference.load_state_dict(optimizer.state_dict())
    assert torch.equal(reference.state_dict()["state"][0]["exp_avg"], state["exp_avg"])


def test_moment_bytes_per_parameter():
    assert [moment_bytes_per_param(s) for s in ("fp32", "bf16", "fp8")] == [8, 4, 2 + 8 / 128]
    weight = torch.nn.Parameter(torch.randn(64, 128))
    optimizer = CompressedAdamW([weight], precision="fp8")
    weight.grad = torch.randn_like(weight)
    optimizer.step()
    stored = sum(
        t.numel() * t.element_size() for k, t in optimizer.state[weight].items() if k != "step"
    )
    assert stored == moment_bytes_per_param("fp8") * weight.numel()


def test_sweep_spec_takes_optimizer_state(shakespeare):
    spec = SweepSpec.model_validate(
        tiny_sweep(shakespeare)
        | {"train": tiny_sweep(shakespeare)["train"] | {"optimizer_state": "fp8"}}
    )
    assert spec.trial_config(32, {"lr": 0.01, "wd": 0.0}).optimizer_state == "fp8"
    with pytest.raises(ValidationError) as error:
        SweepSpec.model_validate(
            tiny_sweep(shakespeare)
            | {"train": tiny_sweep(shakespeare)["train"] | {"optimizer_state": "fp16"}}
        )
    assert error.value.errors()[0]["loc"] == ("train", "optimizer_state")


def test_fp8_moments_benchmark_runs_tiny(tmp_path):
    """Every part of benchmarks/fp8_moments.py in its CPU-sized form, as CI can run it."""
    from benchmarks.fp8_moments import main

    parts = ["scales", "memory", "quality"]
    results = main(["--parts", *parts, "--tiny", "--steps", "3", "--out", str(tmp_path)])
    schemes = results["scales"]["schemes"]
    assert 0 < schemes["block_128"]["update_rms_error"] < 0.2
    assert [row["optimizer_state"] for row in results["memory"]["rows"]] == ["fp32", "bf16", "fp8"]
    quality = results["quality"]
    by_seed = quality["eval_loss_by_seed"]
    assert sorted(by_seed) == ["bf16", "fp32", "fp32_lr_nudged", "fp8"]
    assert all(len(losses) == 2 for losses in by_seed.values())  # the seeds a gap is read against
    assert all(math.isfinite(v) for losses in by_seed.values() for v in losses)
    assert by_seed["fp32"][0] != by_seed["fp32"][1]  # the seeds differ, so the spread means noise
    # paired by seed: each ratio is that seed's loss over fp32's at the same seed
    assert quality["ratio_to_fp32_by_seed"]["fp32"] == [1.0, 1.0]
    assert quality["ratio_to_fp32_by_seed"]["fp8"][1] == by_seed["fp8"][1] / by_seed["fp32"][1]
    assert quality["seed_spread"] > 0
    # the chaos-floor control changes the LR by one part in 2^20: after 3 steps it is fp32
    assert quality["ratio_to_fp32_by_seed"]["fp32_lr_nudged"] == pytest.approx([1, 1], abs=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"fp8_moments_{part}_tiny.json" for part in ("memory", "quality", "scales")
    ]


def _fsdp_rank(rank: int, init_file: str, out: str) -> None:
    """One of two gloo ranks: FSDP2 (as `sweeper.launch` shards), one FP8-moment step on the
    same batch as the test's unsharded model, the full state saved, and that state loaded
    into a fresh sharded model and optimizer and saved again."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_state_dict,
        set_state_dict,
    )

    from sweeper.launch import wrap_model

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    config = _fsdp_config()
    cpu, full = torch.device("cpu"), StateDictOptions(full_state_dict=True, cpu_offload=True)
    # the first pass trains and saves, the second loads what rank 0 saved (as a resume does)
    for checkpoint in (f"{out}.first", out):
        model = wrap_model(build_model(config, cpu), "fsdp", cpu)
        optimizer, scheduler = build_optimizer(model, config)
        if checkpoint == out:
            model_state, optim_state = torch.load(f"{out}.first", weights_only=False)
            set_state_dict(
                model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                options=StateDictOptions(full_state_dict=True),
            )  # fmt: skip
        else:
            train_step(model, optimizer, scheduler, _fsdp_batch(), config)
        state = get_state_dict(model, optimizer, options=full)  # the full state on rank 0
        if rank == 0:
            torch.save(state, checkpoint)
        dist.barrier()
    dist.destroy_process_group()


def _fsdp_config() -> TrainConfig:
    return debug_config(str(SHAKESPEARE), precision="fp32", optimizer_state="fp8", warmup=0.0)


def _fsdp_batch() -> tuple[torch.Tensor, torch.Tensor]:
    return Batches(split_corpus(str(SHAKESPEARE))[0], batch_size=4, seq_len=64, seed=0).next()


def test_fsdp2_shards_the_moments_and_round_trips_their_checkpoint(tmp_path):
    out = tmp_path / "state.pt"
    mp.start_processes(
        _fsdp_rank, args=(str(tmp_path / "group"), str(out)), nprocs=2, start_method="spawn"
    )
    model_state, optim_state = torch.load(f"{out}.first", weights_only=False)
    model_again, optim_again = torch.load(out, weights_only=False)
    config = _fsdp_config()
    model = build_model(config, torch.device("cpu"))
    optimizer, scheduler = build_optimizer(model, config)
    train_step(model, optimizer, scheduler, _fsdp_batch(), config)
    unsharded = dict(optimizer.moments())
    for name, param in model.named_parameters():
        torch.testing.assert_close(model_state[name], param.detach(), rtol=1e-5, atol=1e-6)
        exp_avg = optim_state["state"][name]["exp_avg"]
        assert exp_avg.shape == param.shape  # gathered from the two shards
        # Each rank compressed the blocks of its own shard: the moments agree within one
        # e4m3 spacing (2^-3 relative; among subnormals, 2^-9 of a block's scale).
        expected = unsharded[param]["exp_avg"]
        atol = float(expected.abs().max()) * 2.0**-8 / 448
        torch.testing.assert_close(exp_avg, expected, rtol=2.0**-3, atol=atol)
    # loaded into a fresh sharded optimizer (compressed per shard), then gathered again
    for name, state in optim_state["state"].items():
        for key, value in state.items():
            assert torch.equal(optim_again["state"][name][key], value), (name, key)
    for name, value in model_state.items():
        assert torch.equal(model_again[name], value), name


def test_fused_needs_cuda_parameters():
    """``fused=True`` refuses CPU parameters outside Triton's interpreter; the default (None)
    takes the torch path on CPU, and False always does."""
    weight = torch.nn.Parameter(torch.randn(8, 200))
    with pytest.raises(ValueError, match=r"fused=True\) needs CUDA parameters .* got one on cpu"):
        CompressedAdamW([weight], fused=True)
    for fused in (None, False):
        optimizer = CompressedAdamW([weight], fused=fused)
        weight.grad = torch.randn_like(weight)
        optimizer.step()  # the torch path: no Triton launch on a CPU tensor
        assert optimizer.state[weight]["exp_avg"].dtype == torch.float8_e4m3fn
