"""Full training steps of the µS GPT at full widths: BF16, our FP8, torchao and static FP8.

Tokens/s, MFU and peak memory of whole steps (forward, backward, AdamW over every parameter)
at widths 1024-8192, seq 2048, head_dim 128, vocabulary 256 (bytes, the project's default),
the GELU MLP; every variant at a width on the same model, measured side by side in one run:

* ``bf16-eager`` / ``bf16-compiled``: the µS model in bf16 autocast (fp32 master weights), as
  the trainer runs ``precision="bf16"``; compiled with ``torch.compile``.
* ``fp8-eager`` / ``fp8-compiled`` / ``fp8-graphs``: every hidden linear through our kernels
  (`kernels.fp8_linear`, the trainer's ``precision="fp8"``); ``fp8-graphs`` is the eager model
  replayed from CUDA graphs with the weights' FP8 work on a side stream (`models.steps`).
* ``torchao-tensorwise`` / ``torchao-rowwise``: the bf16 model's hidden linears through
  torchao's ``convert_to_float8_training`` (dynamic scales) with that recipe, compiled.
* ``scaled-mm-compiled``: static µS scales through ``torch._scaled_mm`` with fast accumulation
  (`benchmarks.bench_mlp.StaticScaledMM`: e4m3 operands, e5m2 gradients), compiled.
* ``fp8-compiled-triton-gemms`` / ``fp8-compiled-cublas-gemms`` (on request, not by default):
  ``fp8-compiled`` with every FP8 GEMM on one library (`kernels.triton_gemm.route_gemms`)
  instead of the faster at each shape, timed alone: whether that choice holds inside a step.

Embedding and readout stay bf16 in all of them. Every variant's optimizer is
`models.optim.build_optimizer` over `GPT.parameter_groups`, checked to hold every parameter of
the model it steps. Each measurement runs in its own process, so no compiled graph, FP8
backend or memory peak reaches another; the on-disk caches (Triton, inductor, our tuner) are
shared: they save compilation, which is not timed.

Time: ``--warmup`` steps (compilation, tuning, the graphs' capture), then ``--steps`` steps on
one fixed batch of random tokens (the data loader is not what is measured); tokens/s from the
synchronised wall time of those steps, ``step_ms_median`` and ``step_ms`` (each step, in
order) from CUDA events around each; ``gpu_readings`` the medians of nvidia-smi's SM clock,
power draw and limit and temperature over those steps (on a CUDA machine with nvidia-smi).
FP8 variants on our kernels also record ``tuned``, the tiles and per-shape GEMM routes (ours
or cuBLAS) they ran (`kernels.ops.best_configs`).
Peak memory: ``torch.cuda.max_memory_allocated`` (and reserved) over the whole process.

MFU: model FLOPs per token over the GPU's dense peak for the variant's matmul dtype
(`PEAK_TFLOPS`; None on a device it does not list), with (PaLM's convention)

    flops_per_token = 6 * N + 12 * depth * seq_len * width

N the parameters but the embedding table (a lookup, no matmul); the second term is attention's
QKᵀ and AV, forward and backward, counted without the causal mask's halving.

Depth and sequences per step (`SHAPES`) fill about 60-80 GiB of a 141 GB H200 by
`estimated_peak_gib` (fp32 weights, gradients and Adam moments, the weights' low-precision
copies, activations at a conservative 64 bytes per token, layer and unit of width: eager bf16
saves about 45), deep enough that the blocks dominate and shallow enough to keep compilation
(it grows with depth) short; ``--depth`` / ``--batch`` override them. A shape estimated above
90% of the GPU's memory is skipped with the estimate as its reason. A variant this machine
cannot run (no CUDA for graphs and ``torch._scaled_mm``, no torchao) is skipped with its
reason; on CPU our FP8 and torchao run their emulations, which checks the wiring, not the speed.

    python -m benchmarks.train_throughput [--widths 1024 2048 4096 8192] [--variants ...]
        [--steps 10] [--log results.jsonl]
    python -m benchmarks.train_throughput --tiny --device cpu   # width 64, depth 1, seq 32
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import itertools
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from benchmarks.bench_mlp import StaticScaledMM
from benchmarks.common import RESULTS, GpuSampler, environment, kernel_profile, write_json
from benchmarks.proxy_speed import Log
from kernels import E4M3Copies
from models import ModelConfig, TrainConfig
from models.gpt import GPT, ScaledLinear, hidden_linears
from models.optim import build_optimizer
from models.steps import steps_for
from models.train import build_model, resolve_device

if TYPE_CHECKING:
    from kernels.triton_gemm import Routing

SEQ_LEN = 2048
HEAD_DIM = 128
VOCAB_SIZE = 256
# width -> (depth, sequences per step): see the module docstring and `estimated_peak_gib`.
SHAPES = {1024: (8, 64), 2048: (8, 32), 4096: (4, 32), 8192: (2, 16)}
# --tiny: the CPU test's shapes (its widths replace --widths).
TINY = {"widths": [64], "depth": 1, "batch": 2, "seq_len": 32, "head_dim": 16}

MatmulDtype = Literal["bf16", "fp8"]
# Dense peak TFLOP/s by `torch.cuda.get_device_name()` and matmul dtype (SXM parts, no sparsity).
PEAK_TFLOPS: dict[str, dict[MatmulDtype, float]] = {
    "NVIDIA H100 80GB HBM3": {"bf16": 989.0, "fp8": 1979.0},
    "NVIDIA H200": {"bf16": 989.0, "fp8": 1979.0},
}
# Read from nvidia-smi during the timed steps (`GpuSampler`), result key -> its field: FP8
# GEMMs run an H100 at its power limit, where the clock (and with it a step) moves by run.
GPU_READINGS = {
    "sm_clock_mhz": "clocks.sm",
    "power_w": "power.draw",
    "power_limit_w": "power.limit",
    "temperature_c": "temperature.gpu",
}
NVIDIA_SMI = shutil.which("nvidia-smi") is not None

Swap = Literal["torchao-tensorwise", "torchao-rowwise", "scaled-mm"]


@dataclasses.dataclass(frozen=True)
class Variant:
    precision: Literal["bf16", "fp8"]  # the trainer's: bf16 autocast, or our FP8 kernels
    compile: bool
    graphs: bool = False  # replay each step from a CUDA graph (`models.steps.GraphedSteps`)
    swap: Swap | None = None  # another FP8 linear in place of the hidden layers' own
    matmul_dtype: MatmulDtype = "fp8"  # the hidden matmuls', for MFU
    gemms: Routing = "timed"  # our FP8 GEMMs' library: the faster per shape, or one

    def unavailable(self, device: torch.device) -> str | None:
        """Why this machine cannot run the variant, None where it can."""
        cuda_only = (
            "CUDA graphs" if self.graphs
            else "torch._scaled_mm (cuBLAS FP8)" if self.swap == "scaled-mm"
            else "a pinned GEMM library" if self.gemms != "timed"
            else None
        )  # fmt: skip
        if cuda_only is not None and device.type != "cuda":
            return f"{cuda_only}: needs a CUDA device, this run has {device.type}"
        if self.swap in TORCHAO and importlib.util.find_spec("torchao") is None:
            return "torchao is not installed (bash ../shared/tools/gpu-wheels.sh --torchao)"
        return None


VARIANTS = {
    "bf16-eager": Variant("bf16", compile=False, matmul_dtype="bf16"),
    "bf16-compiled": Variant("bf16", compile=True, matmul_dtype="bf16"),
    "fp8-eager": Variant("fp8", compile=False),
    "fp8-compiled": Variant("fp8", compile=True),
    "fp8-graphs": Variant("fp8", compile=False, graphs=True),
    "torchao-tensorwise": Variant("bf16", compile=True, swap="torchao-tensorwise"),
    "torchao-rowwise": Variant("bf16", compile=True, swap="torchao-rowwise"),
    "scaled-mm-compiled": Variant("fp8", compile=True, swap="scaled-mm"),
    "fp8-compiled-triton-gemms": Variant("fp8", compile=True, gemms="triton"),
    "fp8-compiled-cublas-gemms": Variant("fp8", compile=True, gemms="cublas"),
}
# What the issue compares; bf16-eager (the CPU test) and the pinned GEMMs (a diagnosis) on request.
ON_REQUEST = ("bf16-eager", "fp8-compiled-triton-gemms", "fp8-compiled-cublas-gemms")
DEFAULT_VARIANTS = [name for name in VARIANTS if name not in ON_REQUEST]
BASELINE = "bf16-compiled"
TORCHAO = ("torchao-tensorwise", "torchao-rowwise")


# --- FLOPs, MFU, memory: pure functions of the shape ---------------------------------------


def flops_per_token(model: ModelConfig) -> int:
    """6 N (N: parameters but the embedding) + 12 depth seq width (attention)."""
    n = model.parameter_count - model.vocab_size * model.width
    return 6 * n + 12 * model.depth * model.seq_len * model.width


def peak_tflops(device_name: str | None, dtype: MatmulDtype) -> float | None:
    """The dense peak of ``device_name`` in ``dtype``, None for a device `PEAK_TFLOPS` lacks."""
    return PEAK_TFLOPS.get(device_name or "", {}).get(dtype)


# fp32 master weight, its gradient, Adam's two moments; plus the bf16 or FP8 copies a step
# keeps of each weight for its backward.
BYTES_PER_PARAM = 16 + 2
ACTIVATION_BYTES = 64  # per token, layer and unit of width (eager bf16 saves about 45)
LOGIT_BYTES = 12  # per token and vocabulary entry: fp32 logits, their gradient, the bf16 ones


def estimated_peak_gib(model: ModelConfig, batch: int) -> float:
    """A conservative peak of one training step (see the module docstring)."""
    tokens = batch * model.seq_len
    activations = ACTIVATION_BYTES * tokens * model.depth * model.width
    logits = LOGIT_BYTES * tokens * model.vocab_size
    return (BYTES_PER_PARAM * model.parameter_count + activations + logits) / 2**30


# --- the other FP8 linears, in place of the hidden layers ----------------------------------


class _TakenOver(ScaledLinear):
    """A hidden layer rebuilt around another's weight, group, fan-in and FP8 grad scale, so
    `GPT.parameter_groups` (and the optimizer built from it) still yields that weight."""

    def __init__(self, layer: ScaledLinear, config: ModelConfig):
        with torch.device("meta"):  # no weights of its own: the layer's are moved over
            super().__init__(layer.fan_in, layer.weight.shape[0], layer.group, config)
        self.weight = layer.weight
        self.fp8_grad_scale = layer.fp8_grad_scale

    def takes_e4m3_copies(self, x: torch.Tensor) -> bool:
        return False  # it casts (or not) in its own way: the blocks make no casts for it


class ScaledMMLinear(_TakenOver):
    """``x Wᵀ * multiplier`` through ``torch._scaled_mm`` with static scales."""

    def forward(self, x: torch.Tensor, x8: E4M3Copies | None = None) -> torch.Tensor:
        x, weight = self.fp8_operands(x)
        y: torch.Tensor = StaticScaledMM.apply(x, weight, self.multiplier, self.fp8_grad_scale)
        return y


class NNLinear(_TakenOver):
    """The same layer through an ``nn.Linear`` sharing its weight: the module type torchao's
    ``convert_to_float8_training`` swaps (it passes the weight on to its Float8Linear)."""

    def __init__(self, layer: ScaledLinear, config: ModelConfig):
        super().__init__(layer, config)
        with torch.device("meta"):
            self.linear = nn.Linear(self.fan_in, self.weight.shape[0], bias=False)
        self.linear.weight = self.weight

    def forward(self, x: torch.Tensor, x8: E4M3Copies | None = None) -> torch.Tensor:
        return self.linear(x) * self.multiplier


def replace_hidden_linears(model: GPT, layer_class: type[_TakenOver]) -> None:
    for name, layer in list(hidden_linears(model)):
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer_class(layer, model.config))


def apply_swap(model: GPT, swap: Swap, device: torch.device) -> None:
    if swap == "scaled-mm":
        replace_hidden_linears(model, ScaledMMLinear)
        return
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    replace_hidden_linears(model, NNLinear)
    config = Float8LinearConfig.from_recipe_name(swap.removeprefix("torchao-"))
    if device.type != "cuda":  # torchao's own emulation, as our FP8 runs emulated on CPU
        config = dataclasses.replace(config, emulate=True)
    convert_to_float8_training(model, config=config)


def check_optimizer_holds_every_parameter(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> int:
    """The parameter count, after checking the optimizer steps each of the model's parameters
    once: a swapped layer whose weight left `GPT.parameter_groups` would train frozen."""
    in_model = {id(p): p.numel() for p in model.parameters()}
    in_optimizer = [id(p) for group in optimizer.param_groups for p in group["params"]]
    if sorted(in_optimizer) != sorted(in_model):
        missing = sum(n for i, n in in_model.items() if i not in set(in_optimizer))
        raise RuntimeError(
            f"the optimizer holds {len(in_optimizer)} tensors, the model {len(in_model)}"
            f" ({missing} parameters not optimised)"
        )
    return sum(in_model.values())


# --- one measurement, in its own process ---------------------------------------------------


def train_config(spec: dict[str, Any]) -> TrainConfig:
    variant = VARIANTS[spec["variant"]]
    return TrainConfig(
        model=ModelConfig(
            width=spec["width"],
            depth=spec["depth"],
            head_dim=spec["head_dim"],
            seq_len=spec["seq_len"],
            vocab_size=VOCAB_SIZE,
        ),
        steps=spec["warmup"] + spec["steps"],
        batch_size=spec["batch"],
        precision=variant.precision,
        device=spec["device"],
        compile=variant.compile,
        cuda_graphs=variant.graphs,
    )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _mark(device: torch.device) -> torch.cuda.Event | float:
    """A point in time: a CUDA event on the device's stream, else the host clock (CPU ops
    run synchronously)."""
    if device.type != "cuda":
        return time.perf_counter()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def _seconds(start: torch.cuda.Event | float, end: torch.cuda.Event | float) -> float:
    if isinstance(start, float) and isinstance(end, float):
        return end - start
    assert isinstance(start, torch.cuda.Event) and isinstance(end, torch.cuda.Event)
    return start.elapsed_time(end) / 1e3


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the variant's model and optimizer, warm up, time ``spec["steps"]`` steps."""
    variant, config = VARIANTS[spec["variant"]], train_config(spec)
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if variant.gemms != "timed":
        from kernels.triton_gemm import route_gemms

        route_gemms(variant.gemms)
    model = build_model(config, device)
    if variant.swap is not None:
        apply_swap(model, variant.swap, device)
    optimizer, scheduler = build_optimizer(model, config, capturable=variant.graphs)
    params = check_optimizer_holds_every_parameter(model, optimizer)
    step_fn: nn.Module = torch.compile(model) if config.compile else model  # type: ignore[assignment]
    steps = steps_for(step_fn, optimizer, scheduler, config, graphed=variant.graphs)
    shape = (config.batch_size, config.model.seq_len)
    tokens = torch.randint(0, config.model.vocab_size, (shape[0], shape[1] + 1), device=device)
    batch = (tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous())

    started = time.perf_counter()
    for step in range(max(spec["warmup"], steps.warmup_steps)):
        steps.train(batch)
        if step + 1 == steps.warmup_steps:
            steps.warmed_up(batch)
    _synchronize(device)
    warmup_s = time.perf_counter() - started

    sampler = None
    if device.type == "cuda" and NVIDIA_SMI:
        sampler = GpuSampler(GPU_READINGS.values()).start()
        time.sleep(0.3)  # nvidia-smi's start, before the first timed step
    marks = []  # one before each timed step and one after the last
    started, host_started = time.perf_counter(), time.time()
    for _ in range(spec["steps"]):
        marks.append(_mark(device))
        loss = steps.train(batch)
    marks.append(_mark(device))
    _synchronize(device)
    wall_s = time.perf_counter() - started
    if sampler is not None:
        sampler.stop()
    step_s = [_seconds(a, b) for a, b in itertools.pairwise(marks)]

    tokens_per_s = spec["steps"] * config.tokens_per_step / wall_s
    flops = flops_per_token(config.model)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak = peak_tflops(device_name, variant.matmul_dtype)
    result: dict[str, Any] = {
        "status": "measured",
        "params": params,
        "tokens_per_step": config.tokens_per_step,
        "tokens_per_s": tokens_per_s,
        "step_ms_median": 1e3 * sorted(step_s)[len(step_s) // 2],
        # each step in order: tokens/s counts every one, so an outlier shows here
        "step_ms": [round(1e3 * s, 2) for s in step_s],
        "warmup_s": warmup_s,
        "final_loss": loss.item(),
        "flops_per_token": flops,
        "model_tflops_per_s": tokens_per_s * flops / 1e12,
        "mfu": None if peak is None else tokens_per_s * flops / (peak * 1e12),
        "mfu_peak_tflops": peak,
    }
    if sampler is not None:
        # medians over the timed steps: what clock the GPU held, at what power
        timed = (host_started, host_started + wall_s)
        result["gpu_readings"] = {
            key: sampler.median(field, *timed) for key, field in GPU_READINGS.items()
        }
    if device.type == "cuda":
        result["peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
        if spec.get("profile"):
            result["profile"] = kernel_profile(lambda: steps.train(batch), spec["profile"])
        if variant.precision == "fp8" and variant.swap is None:
            # Each process times its own tiles and GEMM routes (a fresh machine has no cache),
            # and a close call can go either way: what this measurement ran.
            from kernels.ops import best_configs

            result["tuned"] = best_configs()
    return result


def in_new_process(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """`measure` in a process of its own; a crash, an OOM or a timeout becomes an error row."""
    command = [sys.executable, "-m", "benchmarks.train_throughput", "--one", json.dumps(spec)]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"timed out after {timeout_s:.0f} s"}
    if out.returncode != 0:
        return {"status": "error", "error": out.stderr.strip()[-2000:]}
    record: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return record


# --- the run: every width, every variant, ratios -------------------------------------------


def ratios(row: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each measured variant's tokens/s over BF16 compiled's and over the best torchao
    recipe's, and its peak memory over BF16 compiled's."""

    def value(name: str, key: str) -> float | None:
        got = row.get(name, {}).get(key)
        return got if isinstance(got, float) and math.isfinite(got) and got > 0 else None

    torchao = {name: v for name in TORCHAO if (v := value(name, "tokens_per_s")) is not None}
    best_torchao = max(torchao, key=lambda name: torchao[name], default=None)
    bf16, bf16_memory = value(BASELINE, "tokens_per_s"), value(BASELINE, "peak_allocated_gib")
    out: dict[str, Any] = {"best_torchao": best_torchao}
    for name in row:
        speed, memory = value(name, "tokens_per_s"), value(name, "peak_allocated_gib")
        if speed is None:
            continue
        out[name] = {
            "over_bf16_compiled": None if bf16 is None else speed / bf16,
            "over_best_torchao": None if best_torchao is None else speed / torchao[best_torchao],
            "memory_over_bf16_compiled": None
            if memory is None or bf16_memory is None
            else memory / bf16_memory,
        }
    return out


def run(args: argparse.Namespace, log: Log) -> dict[str, Any]:
    device = resolve_device(args.device)
    memory_gib = (
        torch.cuda.get_device_properties(device).total_memory / 2**30
        if device.type == "cuda"
        else None
    )
    rows = []
    for width in args.widths:
        depth, batch = SHAPES.get(width, (None, None))
        depth, batch = args.depth or depth, args.batch or batch
        if depth is None or batch is None:
            raise SystemExit(f"width {width} has no default shape: give --depth and --batch")
        shape = {"width": width, "depth": depth, "batch": batch, "seq_len": args.seq_len}
        model = ModelConfig(
            width=width, depth=depth, head_dim=args.head_dim, seq_len=args.seq_len,
            vocab_size=VOCAB_SIZE,
        )  # fmt: skip
        estimate = estimated_peak_gib(model, batch)
        row: dict[str, Any] = {**shape, "estimated_peak_gib": estimate, "variants": {}}
        for name in args.variants:
            reason = VARIANTS[name].unavailable(device)
            if reason is None and memory_gib is not None and estimate > 0.9 * memory_gib:
                reason = f"estimated peak {estimate:.0f} GiB > 90% of {memory_gib:.0f} GiB"
            if reason is not None:
                result: dict[str, Any] = {"status": "skipped", "reason": reason}
            else:
                spec = {
                    **shape, "variant": name, "head_dim": args.head_dim, "steps": args.steps,
                    "warmup": args.warmup, "device": str(device), "profile": args.profile,
                }  # fmt: skip
                result = in_new_process(spec, args.variant_timeout)
            row["variants"][name] = result
            log.write({**shape, "variant": name, **result})
        row["ratios"] = ratios(row["variants"])
        log.write({**shape, "ratios": row["ratios"]})
        rows.append(row)
        write_json(args.out.stem, payload(args, rows), directory=args.out.parent)  # per width
    return payload(args, rows)


def payload(args: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "benchmark": "train_throughput",
        "environment": environment(),
        "settings": {
            "head_dim": args.head_dim, "vocab_size": VOCAB_SIZE, "steps": args.steps,
            "warmup": args.warmup, "mlp": "gelu",
            "flops_per_token": "6 * (params - vocab * width) + 12 * depth * seq_len * width",
        },
        "rows": rows,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=list(SHAPES))
    parser.add_argument(
        "--variants",
        type=lambda s: s.split(","),
        default=DEFAULT_VARIANTS,
        help=f"comma-separated, of {', '.join(VARIANTS)} (default: not {', '.join(ON_REQUEST)})",
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="steps before the timed ones")
    parser.add_argument(
        "--profile", type=int, default=0, help="then profile this many steps (CUDA): kernel time"
    )
    parser.add_argument("--depth", type=int, help="every width's depth (default: SHAPES)")
    parser.add_argument("--batch", type=int, help="sequences per step (default: SHAPES)")
    parser.add_argument("--seq-len", type=int, default=SEQ_LEN)
    parser.add_argument("--head-dim", type=int, default=HEAD_DIM)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tiny", action="store_true", help=f"the CPU test's shapes: {TINY}")
    parser.add_argument("--variant-timeout", type=float, default=420.0, help="seconds")
    parser.add_argument("--out", type=Path, default=RESULTS / "train_throughput.json")
    parser.add_argument("--log", type=Path, help="append a JSON line per measurement")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a measurement's spec, this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(json.loads(args.one))))
        return
    if args.tiny:
        for key, value in TINY.items():
            setattr(args, key, value)
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.log is not None:
        args.log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = run(args, Log(args.log)) | {"wall_s": time.perf_counter() - started}
    path = write_json(args.out.stem, result, directory=args.out.parent)
    print(json.dumps({"written": str(path)}), flush=True)


if __name__ == "__main__":
    main()
