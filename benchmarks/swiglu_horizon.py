"""SwiGLU against Smooth-SwiGLU in FP8 over a long run: do the activations before the casts grow?

Fishman et al. 2024 saw SwiGLU's product develop outlier channels late in long FP8 runs,
past e4m3's range; Smooth-SwiGLU scales them down before the cast. For each MLP this trains
µS FP8 (eager steps) for ``--steps`` or its share of ``--budget-s``, and every ``--every``
steps measures, on a fixed probe batch, the largest |value| each hidden layer's FP8 input
cast sees (after smoothing: what e4m3 must hold) and the largest raw SwiGLU product (before
it), with the train loss. Each measurement is a JSON line in ``--log`` as it is made; the
summary goes to benchmarks/results/swiglu_horizon.json.

    python -m benchmarks.swiglu_horizon --data .devdata/shakespeare.txt --budget-s 540
    python -m benchmarks.swiglu_horizon --tiny      # a CPU-sized check of the code
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS, environment, write_json
from models import ModelConfig, TrainConfig
from models.data import Batches, split_corpus
from models.gpt import GPT, ScaledLinear, hidden_linears
from models.optim import build_optimizer
from models.steps import precision_context, train_step
from models.train import build_model, resolve_device

SHAKESPEARE = Path(__file__).resolve().parents[1] / "tests" / "data" / "shakespeare.txt"
MLPS = ("swiglu", "smooth_swiglu")


def horizon_config(args: argparse.Namespace, mlp: str) -> TrainConfig:
    if args.tiny:
        model = ModelConfig(width=64, depth=2, head_dim=32, seq_len=64, mlp=mlp)
        return TrainConfig(model=model, data=args.data, steps=args.steps, batch_size=4,
                           device="cpu")  # fmt: skip
    model = ModelConfig(width=1024, depth=4, head_dim=128, seq_len=512, mlp=mlp)
    return TrainConfig(model=model, data=args.data, steps=args.steps, batch_size=32,
                       device="cuda")  # fmt: skip


@torch.no_grad()
def cast_input_maxima(model: GPT, x: torch.Tensor, config: TrainConfig) -> dict[str, float]:
    """Per hidden layer, the largest |value| its FP8 input cast sees on batch ``x``, and for
    each down projection the largest raw input (the SwiGLU product, before smoothing)."""
    maxima: dict[str, torch.Tensor] = {}

    def record(name: str) -> Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            assert isinstance(module, ScaledLinear)
            cast_input, _ = module.fp8_operands(inputs[0])
            maxima[f"{name}.cast"] = cast_input.abs().amax()
            if name.endswith("mlp.down"):
                maxima[f"{name}.product"] = inputs[0].abs().amax()

        return hook

    handles = [m.register_forward_pre_hook(record(n)) for n, m in hidden_linears(model)]
    try:
        with precision_context(config, x.device):
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return {name: float(value) for name, value in maxima.items()}


def run_one(args: argparse.Namespace, mlp: str, budget_s: float) -> dict[str, Any]:
    config = horizon_config(args, mlp)
    device = resolve_device(config.device)
    model = build_model(config, device)
    optimizer, scheduler = build_optimizer(model, config)
    batches = Batches(split_corpus(config.data)[0], batch_size=config.batch_size,
                      seq_len=config.model.seq_len, seed=config.seed)  # fmt: skip
    probe = batches.next(device)[0]
    started, history = time.perf_counter(), []
    for step in range(1, config.steps + 1):
        loss = train_step(model, optimizer, scheduler, batches.next(device), config)
        out_of_time = time.perf_counter() - started > budget_s
        if step % args.every and step != config.steps and not out_of_time:
            continue
        maxima = cast_input_maxima(model, probe, config)
        row = {"mlp": mlp, "step": step, "train_loss": float(loss),
               "elapsed_s": time.perf_counter() - started,
               "max_cast_input": max(v for k, v in maxima.items() if k.endswith(".cast")),
               "max_product": max(v for k, v in maxima.items() if k.endswith(".product")),
               "layers": maxima}  # fmt: skip
        history.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "layers"}), flush=True)
        if args.log:
            with open(args.log, "a") as f:
                f.write(json.dumps(row) + "\n")
        if out_of_time:
            break
    last = history[-1]
    return {
        "steps": last["step"],
        "final_train_loss": last["train_loss"],
        "max_cast_input_over_training": max(r["max_cast_input"] for r in history),
        "max_product_over_training": max(r["max_product"] for r in history),
        "history": [{k: v for k, v in r.items() if k != "layers"} for r in history],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--every", type=int, default=100, help="steps between measurements")
    parser.add_argument("--budget-s", type=float, default=540.0, help="wall time, both MLPs")
    parser.add_argument("--data", default=str(SHAKESPEARE))
    parser.add_argument("--tiny", action="store_true", help="a CPU-sized check of the code")
    parser.add_argument("--log", help="append a JSON line per measurement here")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args(argv)
    runs = {mlp: run_one(args, mlp, args.budget_s / len(MLPS)) for mlp in MLPS}
    result = {"runs": runs, "environment": environment(), "tiny": args.tiny}
    name = "swiglu_horizon" + ("_tiny" if args.tiny else "")
    print(write_json(name, result, directory=args.out), flush=True)
    return result


if __name__ == "__main__":
    main()
