"""Packing proxies onto one GPU: 4 trials at 0.25 GPU each vs one trial at a time.

Runs the real sweep engine (Ray Tune, SQLite) twice on the same 4-trial grid and prints
JSON: aggregate tokens/s (all trials' tokens over the span from the first trial's start
to the last one's end) and the GPU's busy fraction (nvidia-smi utilization sampled every
100 ms over that span), with the packed/serial ratios.

    python -m benchmarks.sweep_packing --data shakespeare.txt --out packing.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch

import db
from benchmarks.common import GpuSampler
from sweeper.engine import run_sweep
from sweeper.settings import Settings
from sweeper.spec import SweepSpec

UTILIZATION = "utilization.gpu"


def spec(data: str, gpu: float, steps: int) -> SweepSpec:
    return SweepSpec.model_validate(
        {
            "name": f"packing-gpu{gpu}",
            "train": {
                "model": {"depth": 4, "head_dim": 64, "seq_len": 256},
                "data": data,
                "steps": steps,
                "batch_size": 16,
                "precision": "bf16",
                "eval_interval": steps // 4,
                "eval_batches": 4,
                "device": "cuda",
            },
            "widths": [128, 256],
            "search": {"lr": {"min": 2**-7, "max": 2**-4, "points": 2}},
            "resources": {"cpu": 2, "gpu": gpu},
        }
    )


def busy_fraction(utilization: list[float]) -> float:
    return sum(utilization) / len(utilization) / 100 if utilization else float("nan")


def measure(database: db.Database, s: SweepSpec, sampler: GpuSampler) -> dict[str, Any]:
    sweep_id = db.create_sweep(database, name=s.name, spec=s.model_dump(mode="json"))
    wall = time.perf_counter()
    status = run_sweep(database, sweep_id, Settings())
    wall = time.perf_counter() - wall
    trials = db.list_trials(database, sweep_id=sweep_id)
    start = min(t.created_at for t in trials).timestamp()
    end = max(t.finished_at for t in trials if t.finished_at).timestamp()
    tokens = sum(t.tokens or 0 for t in trials)
    return {
        "status": str(status),
        "gpu_per_trial": s.resources.gpu,
        "trials": len(trials),
        "span_s": end - start,
        "driver_wall_s": wall,
        "aggregate_tokens_per_s": tokens / (end - start),
        "gpu_busy_fraction": busy_fraction(sampler.readings(UTILIZATION, start, end)),
        "per_trial_tokens_per_s": [t.tokens_per_s for t in trials],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    ray.init(include_dashboard=False, log_to_driver=False)
    sampler = GpuSampler([UTILIZATION]).start()
    with tempfile.TemporaryDirectory() as tmp:
        database = db.connect(f"sqlite:///{tmp}/bench.db")
        serial = measure(database, spec(args.data, 1.0, args.steps), sampler)
        packed = measure(database, spec(args.data, 0.25, args.steps), sampler)
    sampler.stop()
    result = {
        "benchmark": "sweep_packing",
        "device": torch.cuda.get_device_name(),
        "versions": {
            "torch": torch.__version__,
            "ray": ray.__version__,
            "python": platform.python_version(),
        },
        "command": "python -m benchmarks.sweep_packing --data shakespeare.txt "
        f"--steps {args.steps}",
        "serial": serial,
        "packed": packed,
        "throughput_ratio": packed["aggregate_tokens_per_s"] / serial["aggregate_tokens_per_s"],
        "busy_ratio": packed["gpu_busy_fraction"] / serial["gpu_busy_fraction"],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
