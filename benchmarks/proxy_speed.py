"""Proxy trials in FP8 against BF16: steady-state speed, startup, and a real sweep, on one GPU.

Four stages, each printing JSON and writing ``benchmarks/results/proxy_speed_<stage>.json``
(and a JSON line per measurement to ``--log`` as it goes, for runs cut short):

* ``steady``: tokens/s after warm-up and the in-process startup of µS FP8, µS BF16 and SP
  BF16 trials (depth 4, seq 128, head_dim 64) at each width and tokens per step, eagerly and
  with CUDA graphs, all in one process, with FP8/BF16 ratios side by side.
* ``startup``: the startup of a new process with an empty kernel cache (cold) and again
  with the cache that the first one filled (warm), as a sweep's trials see it.
* ``warm-up``: the sweep's kernel warm-up alone, in a new process per kernel-cache state
  (`KERNEL_CACHES`): its imports, and each width's seconds.
* ``sweep``: the real engine (Ray Tune, SQLite): one 21-trial grid (3 widths x 7 LRs,
  500 steps, 0.125 GPU per trial) in µS FP8 and the same in µS BF16 (``--sweeps``, in
  order, each FP8 sweep with the kernel caches it starts from, `KERNEL_CACHES`); wall time
  of each and the GPU's busy fraction while it runs.

    python -m benchmarks.proxy_speed steady startup sweep --data .devdata/shakespeare.txt
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.common import environment, write_json
from models import ModelConfig, TrainConfig
from models.train import train

if TYPE_CHECKING:  # imported where a stage needs them: the others run without Ray or a db
    import db
    from benchmarks.sweep_packing import GpuSampler

WIDTHS = (128, 256, 512, 1024, 2048)
TOKENS_PER_STEP = (4096, 16384)
SEQ_LEN = 128
# name -> (parametrization, precision)
VARIANTS = {"mus-fp8": ("mus", "fp8"), "mus-bf16": ("mus", "bf16"), "sp-bf16": ("sp", "bf16")}
# The kernel caches an FP8 sweep starts from (``--sweeps fp8:<cache>``): "cold", a node's
# first FP8 sweep (no compiled kernels, no tuned choices); "new-shapes", what a sweep of
# shapes the node has not tuned finds (Triton's compiled kernels do not depend on the
# shapes and are kept; the tuned choices do, and are not); "warm", a sweep repeated.
KERNEL_CACHES = ("cold", "new-shapes", "warm")


def trial_config(
    variant: str, width: int, tokens: int, *, graphs: bool, steps: int, data: str
) -> TrainConfig:
    parametrization, precision = VARIANTS[variant]
    return TrainConfig(
        model=ModelConfig(
            width=width, depth=4, head_dim=64, seq_len=SEQ_LEN, parametrization=parametrization
        ),
        data=data,
        steps=steps,
        batch_size=tokens // SEQ_LEN,
        precision=precision,
        lr=2**-5 if parametrization == "mus" else 2**-10,
        eval_interval=steps,
        eval_batches=1,
        device="cuda",
        cuda_graphs=graphs,
    )


def measure(config: TrainConfig) -> dict[str, Any]:
    result = train(config)
    return {
        "status": result.status,
        "tokens_per_s": result.tokens_per_s,
        "startup_s": result.startup_s,
        "wall_s": result.wall_s,
        "final_eval_loss": result.final_eval_loss,
    }


class Log:
    """JSON lines as they come, so a run stopped at its time limit keeps what it measured."""

    def __init__(self, path: Path | None):
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(line + "\n")


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return None
    return a / b


def stage_steady(args: argparse.Namespace, log: Log) -> dict[str, Any]:
    rows = []
    for graphs in (True, False):
        # Eager FP8 at proxy widths is what this work removes: a few steps time it well.
        steps = args.steps if graphs else max(10, args.steps // 5)
        for tokens in TOKENS_PER_STEP:
            for width in WIDTHS:
                row: dict[str, Any] = {"width": width, "tokens_per_step": tokens, "graphs": graphs}
                for variant in VARIANTS:
                    config = trial_config(
                        variant, width, tokens, graphs=graphs, steps=steps, data=args.data
                    )
                    row[variant] = measure(config)
                row["fp8_over_bf16"] = _ratio(
                    row["mus-fp8"]["tokens_per_s"], row["mus-bf16"]["tokens_per_s"]
                )
                row["fp8_over_sp_bf16"] = _ratio(
                    row["mus-fp8"]["tokens_per_s"], row["sp-bf16"]["tokens_per_s"]
                )
                log.write({"stage": "steady", **row})
                rows.append(row)
    return {"rows": rows, "steps_graphs": args.steps}


def stage_startup(args: argparse.Namespace, log: Log) -> dict[str, Any]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        caches = {
            "SWEEPER_KERNEL_CACHE": f"{tmp}/kernels",
            "TRITON_CACHE_DIR": f"{tmp}/triton",
            "TORCHINDUCTOR_CACHE_DIR": f"{tmp}/inductor",
        }
        for width in WIDTHS:
            for variant in ("mus-fp8", "mus-bf16"):
                config = trial_config(
                    variant, width, TOKENS_PER_STEP[0], graphs=True, steps=20, data=args.data
                )
                row: dict[str, Any] = {"width": width, "variant": variant}
                for cache in ("cold", "warm"):  # the warm process finds the cold one's cache
                    row[cache] = _in_new_process(config, caches)
                log.write({"stage": "startup", **row})
                rows.append(row)
    return {"rows": rows}


def _in_new_process(config: TrainConfig, env: dict[str, str]) -> dict[str, Any]:
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.proxy_speed", "--one", config.model_dump_json()],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    record: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    record["process_wall_s"] = time.perf_counter() - started  # imports and CUDA context too
    return record


def sweep_spec(precision: str, data: str, steps: int) -> dict[str, Any]:
    return {
        "name": f"proxy-speed-{precision}",
        "train": {
            "model": {"depth": 4, "head_dim": 64, "seq_len": SEQ_LEN},
            "data": data,
            "steps": steps,
            "batch_size": TOKENS_PER_STEP[0] // SEQ_LEN,
            "precision": precision,
            "eval_interval": steps // 5,
            "eval_batches": 4,
            "device": "cuda",
        },
        "widths": [128, 256, 512],
        "search": {"lr": {"min": 2**-8, "max": 2**-2, "points": 7}},
        "resources": {"cpu": 1, "gpu": 0.125},
    }


def _caches(tmp: str) -> dict[str, Path]:
    """The kernel tuner's and Triton's caches, in a run's own folder."""
    return {"SWEEPER_KERNEL_CACHE": Path(tmp, "kernels"), "TRITON_CACHE_DIR": Path(tmp, "triton")}


def _start_from(cache: str, caches: dict[str, Path]) -> None:
    """Leave on disk what a process finds in the `KERNEL_CACHES` state ``cache``."""
    emptied = {"cold": caches.values(), "new-shapes": [caches["SWEEPER_KERNEL_CACHE"]]}
    for path in emptied.get(cache, []):
        shutil.rmtree(path, ignore_errors=True)


def stage_warm_up(args: argparse.Namespace, log: Log) -> dict[str, Any]:
    """The sweep stage's kernel warm-up (`sweeper.warm_up`) alone, in a new process per
    kernel-cache state: its imports, then each width's seconds. Cold minus new-shapes is
    Triton's compilation, new-shapes minus warm the timing of candidates."""
    rows = []
    spec = sweep_spec("fp8", args.data, args.sweep_steps)
    with tempfile.TemporaryDirectory() as tmp:
        caches = _caches(tmp)
        for cache in KERNEL_CACHES:
            _start_from(cache, caches)
            started = time.time()
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.proxy_speed", "--warm-up", json.dumps(spec)],
                env={**os.environ, **{name: str(path) for name, path in caches.items()}},
                capture_output=True,
                text=True,
                check=True,
            )
            row = {"kernel_cache": cache, **json.loads(out.stdout.strip().splitlines()[-1])}
            row["process_start_s"] = row.pop("entered_at") - started  # interpreter, torch
            row["process_wall_s"] = time.time() - started
            log.write({"stage": "warm-up", **row})
            rows.append(row)
    return {"rows": rows}


def warm_up_in_this_process(spec: dict[str, Any]) -> dict[str, Any]:
    """`--warm-up`: what `stage_warm_up` times, inside the new process."""
    entered_at = time.time()
    from sweeper.warm_up import warm_up_widths  # what the warm-up's Ray worker imports

    imported = time.time()
    from sweeper.spec import SweepSpec
    from sweeper.warm_up import warm_up_configs

    sweep = SweepSpec.model_validate(spec)
    return {
        "entered_at": entered_at,
        "warm_up_import_s": imported - entered_at,
        "width_s": warm_up_widths(warm_up_configs(sweep, sweep.widths)),
    }


def stage_sweep(args: argparse.Namespace, log: Log) -> dict[str, Any]:
    import ray

    import db
    from benchmarks.sweep_packing import GpuSampler
    from sweeper.engine import run_sweep
    from sweeper.settings import Settings
    from sweeper.spec import SweepSpec

    sweeps = [entry.partition(":")[::2] for entry in args.sweeps.split(",")]
    for precision, cache in sweeps:
        if (precision == "fp8") != (cache in KERNEL_CACHES):
            raise SystemExit(
                f"--sweeps: fp8:<{'|'.join(KERNEL_CACHES)}> or bf16, got {precision}:{cache}"
            )
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        # Both caches in the run's own folder, set before Ray starts: its workers keep the
        # environment they were started with. Each sweep's cache state is made on disk.
        caches = _caches(tmp)
        os.environ.update({name: str(path) for name, path in caches.items()})
        ray.init(include_dashboard=False, log_to_driver=False)
        sampler = GpuSampler()
        try:
            database = db.connect(f"sqlite:///{tmp}/bench.db")
            for precision, cache in sweeps:
                _start_from(cache, caches)
                spec = SweepSpec.model_validate(sweep_spec(precision, args.data, args.sweep_steps))
                sweep_id = db.create_sweep(
                    database, name=spec.name, spec=spec.model_dump(mode="json")
                )
                start = time.time()
                status = run_sweep(database, sweep_id, Settings())
                end = time.time()
                trials = db.list_trials(database, sweep_id=sweep_id)
                record = {
                    "precision": precision,
                    "kernel_cache": cache or None,  # BF16 has nothing to tune
                    "status": str(status),
                    "trials": len(trials),
                    "wall_s": end - start,
                    "gpu_busy_fraction": sampler.busy(start, end),
                    "trial_tokens_per_s": [t.tokens_per_s for t in trials],
                    "trial_startup_s": [t.startup_s for t in trials],
                    "timeline": _timeline(database, sweep_id, start, end, sampler),
                }
                log.write({"stage": "sweep", **record})
                records.append(record)
        finally:
            sampler.stop()
            ray.shutdown()
    wall = {(r["precision"], r["kernel_cache"]): r["wall_s"] for r in records}
    bf16 = wall.get(("bf16", None))
    return {
        "sweeps": records,
        "wall_ratio_fp8_over_bf16": {
            cache: _ratio(wall.get(("fp8", cache)), bf16) for cache in KERNEL_CACHES
        },
    }


def _timeline(
    database: db.Database, sweep_id: int, start: float, end: float, sampler: GpuSampler
) -> dict[str, Any]:
    """When each trial ran and what the GPU did meanwhile, in seconds from the sweep's start
    (`benchmarks.sweep_timeline` draws it): each trial from its start by Tune to its end,
    with the start of its training run (its last point's time before its end) and its
    startup; the GPU's utilisation samples."""
    import db

    def seconds(at: datetime) -> float:
        return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp() - start

    curves = db.get_curves(database, sweep_id=sweep_id)
    trials = []
    for t in db.list_trials(database, sweep_id=sweep_id):
        points = curves.get(t.id, [])
        finished = None if t.finished_at is None else seconds(t.finished_at)
        trials.append({
            "width": t.width,
            "started_s": seconds(t.created_at),
            "train_started_s": None if finished is None or not points
            else finished - points[-1].time_s,
            "startup_s": t.startup_s,
            "finished_s": finished,
        })  # fmt: skip
    samples = [[round(at - start, 2), u] for at, u in sampler.samples if start <= at <= end]
    return {"trials": trials, "gpu_utilization": samples}


STAGES = {
    "steady": stage_steady,
    "startup": stage_startup,
    "warm-up": stage_warm_up,
    "sweep": stage_sweep,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stages", nargs="*", choices=sorted(STAGES))
    parser.add_argument("--data", default="stdlib")
    parser.add_argument("--steps", type=int, default=100, help="steps of a graphed run")
    parser.add_argument("--sweep-steps", type=int, default=500)
    parser.add_argument(
        "--sweeps",
        default="fp8:cold,bf16,fp8:new-shapes,fp8:warm",
        help="the sweeps, in order: bf16, or fp8:<kernel cache> (KERNEL_CACHES)",
    )
    parser.add_argument("--log", type=Path, help="append a JSON line per measurement")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a TrainConfig, in this process
    parser.add_argument("--warm-up", help=argparse.SUPPRESS)  # a sweep spec, in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(TrainConfig.model_validate_json(args.one))))
        return
    if args.warm_up:
        print(json.dumps(warm_up_in_this_process(json.loads(args.warm_up))))
        return
    log = Log(args.log)
    for name in args.stages:
        started = time.perf_counter()
        benchmark = f"proxy_speed_{name.replace('-', '_')}"
        payload: dict[str, Any] = {"benchmark": benchmark, "environment": environment()}
        payload |= STAGES[name](args, log)
        payload["stage_wall_s"] = time.perf_counter() - started
        path = write_json(benchmark, payload)
        print(json.dumps({"stage": name, "written": str(path)}), flush=True)


if __name__ == "__main__":
    main()
