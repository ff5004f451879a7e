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


def test_the_gelu_mlp_is_one_op_only_where_nothing_watches_its_layers(shakespeare):
    """`MLP` runs `fp8_gelu_mlp` (fused on the GPU) only where that computes what its two
    layers would: both FP8, neither a subclass, no hooks. On the CPU the fused op is the two
    emulated layers, so the model's numbers are the same either way; fp8_health's hooks get
    every GELU layer's operands."""
    config = debug_config(shakespeare, precision="fp8", batch_size=8)
    model = build_model(config, torch.device("cpu"))
    mlp = model.blocks[0].mlp
    assert mlp.up.fusable() and mlp.down.fusable()
    probe = Batches(split_corpus(shakespeare)[0], batch_size=8, seq_len=64, seed=0).next()
    x = probe[0]
    fused = model(x)

    seen: list[str] = []
    handles = [
        layer.register_forward_pre_hook(lambda _m, _i, name=name: seen.append(name))
        for name, layer in hidden_linears(model)
    ]
    try:
        assert not mlp.up.fusable()  # a hook: the layers run one by one, and it is called
        layered = model(x)
    finally:
        for handle in handles:
            handle.remove()
    assert mlp.up.fusable()
    assert torch.equal(fused, layered)
    assert {
        f"blocks.{b}.mlp.{n}" for b in range(config.model.depth) for n in ("up", "down")
    } <= set(seen)
    health = measure_fp8_health(model, probe, config)
    assert health.layers["blocks.0.mlp.down"].gradients.values > 0

    bf16 = build_model(debug_config(shakespeare, precision="bf16"), torch.device("cpu"))
    assert not bf16.blocks[0].mlp.up.fusable()  # not FP8


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
