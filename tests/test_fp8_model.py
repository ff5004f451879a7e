"""FP8 on a µS model: no operand saturates, few gradients flush, at init and after training."""

from __future__ import annotations

import pytest
import torch

from models.compressed_adam import CompressedAdamW
from models.data import Batches, split_corpus
from models.fp8_health import measure_fp8_health, moment_health
from models.gpt import ScaledLinear, hidden_linears
from models.optim import build_optimizer
from models.steps import loss_fn, train_step
from models.train import build_model
from tests.conftest import debug_config


def test_no_saturation_and_few_flushed_gradients(shakespeare):
    config = debug_config(shakespeare, precision="fp8", batch_size=16, steps=50)
    model = build_model(config, torch.device("cpu"))
    batches = Batches(split_corpus(shakespeare)[0], batch_size=16, seq_len=64, seed=0)
    probe = batches.next()
    optimizer, scheduler = build_optimizer(model, config)
    for moment in ("init", "after 50 steps"):
        if moment != "init":
            for _ in range(50):
                train_step(model, optimizer, scheduler, batches.next(), config)
        health = measure_fp8_health(model, probe, config)
        for counts in (health.activations, health.weights, health.gradients):
            assert counts.values > 0
            assert counts.saturated == 0, (moment, health)
        assert health.gradients.flushed_fraction < 0.05, (moment, health.gradients)


def test_fp8_routes_only_hidden_layers(shakespeare):
    model = build_model(debug_config(shakespeare, precision="fp8"), torch.device("cpu"))
    hidden = {name for name, _ in hidden_linears(model)}
    assert len(hidden) == 4 * model.config.depth  # qkv, out, up, down per block
    for name, module in model.named_modules():
        if isinstance(module, ScaledLinear):
            assert (module.fp8_grad_scale is not None) == (name in hidden)
    for precision in ("bf16", "fp32"):
        plain = build_model(debug_config(shakespeare, precision=precision), torch.device("cpu"))
        assert all(m.fp8_grad_scale is None for _, m in hidden_linears(plain))


def test_health_per_layer_covers_the_swiglu_branches(shakespeare):
    config = debug_config(shakespeare, precision="fp8", mlp="smooth_swiglu", batch_size=8)
    model = build_model(config, torch.device("cpu"))
    probe = Batches(split_corpus(shakespeare)[0], batch_size=8, seq_len=64, seed=0).next()
    health = measure_fp8_health(model, probe, config)
    for block in range(config.model.depth):
        for branch in ("gate", "up", "down"):
            layer = health.layers[f"blocks.{block}.mlp.{branch}"]
            assert layer.activations.values > 0 and layer.gradients.values > 0
            assert layer.activations.saturated == layer.weights.saturated == 0
    assert health.activations.values == sum(h.activations.values for h in health.layers.values())


@pytest.mark.parametrize("optimizer_state", ["bf16", "fp8"])
def test_moment_health_counts_what_the_next_step_compresses(shakespeare, optimizer_state):
    config = debug_config(shakespeare, precision="fp32", optimizer_state=optimizer_state)
    model = build_model(config, torch.device("cpu"))
    batches = Batches(split_corpus(shakespeare)[0], batch_size=8, seq_len=64, seed=0)
    optimizer, scheduler = build_optimizer(model, config)
    for _ in range(20):
        train_step(model, optimizer, scheduler, batches.next(), config)
    x, y = batches.next()
    loss_fn(model(x), y).backward()
    assert isinstance(optimizer, CompressedAdamW)
    before = optimizer.state_dict()
    counts = moment_health(optimizer)
    assert counts["exp_avg"].values >= sum(p.numel() for p in model.parameters())
    for moment in counts.values():
        assert moment.saturated == 0  # block scales fit every block's max
        assert moment.flushed_fraction < 1e-3, counts
    after = optimizer.state_dict()
    for index, state in before["state"].items():
        for key, value in state.items():
            assert torch.equal(after["state"][index][key], value)
