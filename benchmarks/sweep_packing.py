"""Packing proxies onto one GPU: 4 trials at 0.25 GPU each vs one trial at a time.

Runs the real sweep engine (Ray Tune, SQLite) twice on the same 4-trial grid and prints
JSON: aggregate tokens/s (all trials' tokens over the span from the first trial's start
to the last one's end) and the GPU's busy fraction (nvidia-smi utilization sampled every
100 ms over that span), with the packed/serial ratios.

    python benchmarks/sweep_packing.py --data shakespeare.txt --out packing.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import ray
import torch

import db
from sweeper.engine import run_sweep
from sweeper.settings import Settings
from sweeper.spec import SweepSpec


class GpuSampler:
    """nvidia-smi utilization.gpu every 100 ms, with timestamps, in a thread."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._proc = subprocess.Popen(
            [
                "nvidia-smi",
                "--query-gpu=utilization.gpu",
                "--format=csv,noheader,nounits",
                "-lms",
                "100",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.strip():
                self.samples.append((time.time(), float(line.strip())))

    def busy(self, start: float, end: float) -> float:
        window = [u for t, u in self.samples if start <= t <= end]
        return sum(window) / len(window) / 100 if window else float("nan")

    def stop(self) -> None:
        self._proc.terminate()


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
        "gpu_busy_fraction": sampler.busy(start, end),
        "per_trial_tokens_per_s": [t.tokens_per_s for t in trials],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    ray.init(include_dashboard=False, log_to_driver=False)
    sampler = GpuSampler()
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
        "command": "python benchmarks/sweep_packing.py --data shakespeare.txt "
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
