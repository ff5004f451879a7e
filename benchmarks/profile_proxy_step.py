"""Where a proxy trial's time goes: startup (tuning, compilation), host launch cost, kernels.

For one proxy shape (default width 256, depth 4, 4096 tokens per step) in µS FP8 and µS
BF16, prints JSON with:

* ``startup``: wall time of the first step with an empty kernel cache, the part of it spent
  timing kernel candidates (which includes compiling them), the first step again with the
  cache filled, in this process and in a new one;
* ``eager_step`` / ``graphed_step``: wall time per steady-state step, and the GPU's kernel
  time per step from the torch profiler (its sum of device-side kernel durations): wall
  minus kernels is what the GPU waits for the host (or, with the weights' FP8 work on a
  side stream, less: kernels that overlap); ``graphed_step_ms_serial`` is the graphed step
  with that work on the one stream (`kernels.overlap`), for the difference;
* ``host_us``: host cost of one FP8 linear layer's pieces, from timing many launches
  (tensor descriptors, the tuned-config lookup, the Triton launch of each kernel);
* ``top_kernels``: the costliest kernels of an eager step.

    python -m benchmarks.profile_proxy_step [--width 256] [--tokens 4096]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch

from benchmarks.common import environment, kernel_profile, write_json
from benchmarks.proxy_speed import trial_config
from kernels import E4M3
from kernels.ops import TUNERS
from kernels.triton_casts import cast_transpose, saturating_cast
from kernels.triton_gemm import fp8_matmul
from models.data import Batches, split_corpus
from models.optim import build_optimizer
from models.steps import steps_for
from models.train import build_model

STEPS = 30


def _steps(config: Any, graphed: bool, overlap: bool | None = None) -> tuple[Any, Batches]:
    model = build_model(config, torch.device("cuda"))
    optimizer, scheduler = build_optimizer(model, config, capturable=graphed)
    train_tokens, _ = split_corpus(config.data)
    batches = Batches(
        train_tokens, batch_size=config.batch_size, seq_len=config.model.seq_len, seed=0
    )
    steps = steps_for(model, optimizer, scheduler, config, graphed=graphed, overlap=overlap)
    return steps, batches


def _timed_steps(steps: Any, batches: Batches, n: int) -> float:
    """ms per step over ``n`` steps, synchronised at both ends."""
    batch = [batches.next("cuda") for _ in range(n)]
    torch.cuda.synchronize()
    started = time.perf_counter()
    for b in batch:
        steps.train(b)
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / n * 1e3


def _tuning_s() -> float:
    return sum(t.tuning_s for t in TUNERS)


def startup(config: Any) -> dict[str, Any]:
    """The first step, cold then warm (the cache dir is this process's, set by the caller)."""
    steps, batches = _steps(config, graphed=False)
    torch.cuda.synchronize()
    started = time.perf_counter()
    steps.train(batches.next("cuda"))
    torch.cuda.synchronize()
    first = time.perf_counter() - started
    return {"first_step_s": first, "tuning_s": _tuning_s()}


def kernel_ms_per_step(steps: Any, batches: Batches) -> tuple[float, list[dict[str, Any]]]:
    batch = iter([batches.next("cuda") for _ in range(10)])
    profiled = kernel_profile(lambda: steps.train(next(batch)), 10)
    return profiled["kernel_ms"], profiled["top_kernels"]


def host_costs(width: int, tokens: int) -> dict[str, float]:
    """µs of host time per call, from 200 back-to-back calls (the GPU keeps up or is idle)."""
    x = torch.randn(tokens, width, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(3 * width, width, device="cuda")
    x8 = saturating_cast(x, E4M3)
    w8 = saturating_cast(w, E4M3)
    out = torch.empty(tokens, 3 * width, device="cuda", dtype=torch.bfloat16)

    def per_call(fn: Any, n: int = 200) -> float:
        fn()
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - started
        torch.cuda.synchronize()
        return elapsed / n * 1e6

    from triton.tools.tensor_descriptor import TensorDescriptor

    return {
        "cast_transpose": per_call(lambda: cast_transpose(x, E4M3)),
        "saturating_cast": per_call(lambda: saturating_cast(x, E4M3)),
        "fp8_matmul": per_call(lambda: fp8_matmul(x8, w8, out=out)),
        "tensor_descriptor": per_call(lambda: TensorDescriptor.from_tensor(x8, [128, 128])),
        "bf16_matmul": per_call(lambda: torch.matmul(x, w.t().to(torch.bfloat16))),
    }


def profile_variant(variant: str, width: int, tokens: int, data: str) -> dict[str, Any]:
    config = trial_config(variant, width, tokens, graphs=False, steps=STEPS, data=data)
    out: dict[str, Any] = {"variant": variant}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SWEEPER_KERNEL_CACHE"] = tmp
        out["startup_cold"] = startup(config)
        out["startup_same_process"] = startup(config)
        command = [sys.executable, "-m", "benchmarks.profile_proxy_step", "--startup-only"]
        command += ["--variant", variant, "--width", str(width), "--tokens", str(tokens)]
        out["startup_new_process_warm"] = json.loads(
            subprocess.run(
                [*command, "--data", data],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "SWEEPER_KERNEL_CACHE": tmp},
            ).stdout.splitlines()[-1]
        )
    eager, batches = _steps(config, graphed=False)
    _timed_steps(eager, batches, 3)
    out["eager_step_ms"] = _timed_steps(eager, batches, STEPS)
    out["eager_kernel_ms"], out["top_kernels"] = kernel_ms_per_step(eager, batches)
    for overlap, suffix in ((True, ""), (False, "_serial")):
        graphed, batches = _steps(config, graphed=True, overlap=overlap)
        for _ in range(graphed.warmup_steps):
            graphed.train(batches.next("cuda"))
        graphed.warmed_up(batches.next("cuda"))
        out[f"graphed_step_ms{suffix}"] = _timed_steps(graphed, batches, STEPS)
        out[f"graphed_kernel_ms{suffix}"], _ = kernel_ms_per_step(graphed, batches)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--data", default="stdlib")
    parser.add_argument("--variant", default=None)
    parser.add_argument("--startup-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.startup_only:
        config = trial_config(
            args.variant, args.width, args.tokens, graphs=False, steps=STEPS, data=args.data
        )
        print(json.dumps(startup(config)))
        return
    payload: dict[str, Any] = {
        "benchmark": "profile_proxy_step",
        "environment": environment(),
        "width": args.width,
        "tokens_per_step": args.tokens,
        "variants": [
            profile_variant(v, args.width, args.tokens, args.data) for v in ("mus-fp8", "mus-bf16")
        ],
        "host_us": host_costs(args.width, args.tokens),
    }
    write_json(f"profile_proxy_step_w{args.width}", payload)
    print(json.dumps(payload))


if __name__ == "__main__":
    main()
