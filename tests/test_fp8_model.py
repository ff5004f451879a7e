"""FP8 on a µS model: no operand saturates, few gradients flush, at init and after training."""

from __future__ import annotations

import torch

from models.data import Batches, split_corpus
from models.fp8_health import measure_fp8_health
from models.gpt import ScaledLinear, hidden_linears
from models.optim import build_optimizer
from models.steps import train_step
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
