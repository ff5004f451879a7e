"""A µS model trained on GPU with the Triton FP8 path, the emulated FP8 path and BF16.

Same config, seed and data for the three runs; only ``precision`` and the FP8 backend
(`kernels.set_fp8_backend`) change. The issue's bar: the Triton run's final eval loss within
1% of the emulated FP8 run's and of the BF16 run's.

    python -m benchmarks.fp8_training_parity --data .devdata/shakespeare.txt [--steps 300]
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

import kernels
from benchmarks.common import environment, write_json
from models import ModelConfig, TrainConfig
from models.train import train

RUNS = {  # name: (precision, FP8 backend)
    "fp8_triton": ("fp8", "triton"),
    "fp8_emulated": ("fp8", "emulate"),
    "bf16": ("bf16", "auto"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="text file (shakespeare)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2**-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda", help="cpu only for smoke tests (interpreter)")
    parser.add_argument("--out", default="fp8_training_parity")
    args = parser.parse_args()

    model = ModelConfig(width=args.width, depth=args.depth, head_dim=64, seq_len=args.seq_len)
    results: dict[str, Any] = {}
    for name, (precision, backend) in RUNS.items():
        config = TrainConfig(
            model=model,
            data=args.data,
            steps=args.steps,
            batch_size=args.batch_size,
            precision=precision,
            lr=args.lr,
            seed=args.seed,
            eval_interval=max(1, args.steps // 6),
            device=args.device,
        )
        kernels.set_fp8_backend(backend)  # type: ignore[arg-type]
        try:
            result = train(config)
        finally:
            kernels.set_fp8_backend("auto")
        results[name] = {
            **result.summary(),
            "curve": [
                (p.step, round(p.train_loss, 4), round(p.eval_loss, 4)) for p in result.curve
            ],
        }
        print(f"{name}: {result.summary()}", flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    triton_loss = results["fp8_triton"]["final_eval_loss"]
    comparison = {}
    for other in ("fp8_emulated", "bf16"):
        ref = results[other]["final_eval_loss"]
        if triton_loss is None or ref is None:
            comparison[f"vs_{other}"] = None
            continue
        rel = (triton_loss - ref) / ref
        comparison[f"vs_{other}"] = {"relative": round(rel, 5), "within_1pct": abs(rel) < 0.01}
    payload = {
        "environment": environment(),
        "config": {k: v for k, v in vars(args).items()},
        "model": model.model_dump(),
        "runs": results,
        "triton_final_eval_loss": comparison,
    }
    path = write_json(args.out, payload)
    print(f"comparison: {comparison}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
