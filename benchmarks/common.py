"""Shared by the benchmarks: environment record, timing, JSON output."""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict[str, Any]:
    """What a reader needs to reproduce a number: device, versions, the command."""
    import triton

    env: dict[str, Any] = {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["device"] = props.name
        env["sms"] = props.multi_processor_count
        env["memory_gib"] = round(props.total_memory / 2**30, 1)
    return env


def bench_ms(fn: Callable[[], Any], *, warmup: int = 50, rep: int = 300) -> float:
    """Median time of ``fn`` in ms (CUDA events via triton's do_bench; warmup/rep in ms)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def bench_graph_ms(fn: Callable[[], Any], *, rep: int = 200) -> float:
    """Median time of ``fn`` in ms replayed from a CUDA graph: the GPU's time alone, without
    the CPU's launch overhead (which ``bench_ms`` includes when it exceeds the GPU work)."""
    from triton.testing import do_bench_cudagraph

    return float(do_bench_cudagraph(fn, rep=rep, return_mode="median"))


def write_json(name: str, payload: dict[str, Any], *, directory: Path = RESULTS) -> Path:
    """Write ``payload`` to <directory>/<name>.json (benchmarks/results/) and return the path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


class GpuSampler:
    """nvidia-smi's readings of the first GPU every ``interval_ms`` (``fields``, its
    ``--query-gpu`` names), with host timestamps, from a background process and thread.

    Why: an H100's FP8 GEMMs run at its power limit, where the SM clock drops; two runs of the
    same code can differ by their clocks, not their kernels, and only a reading taken during
    the timed steps tells which. Readings that are not numbers ("[N/A]") are left out.
    """

    def __init__(self, fields: Sequence[str], *, interval_ms: int = 100) -> None:
        self.fields = tuple(fields)
        self.interval_ms = interval_ms
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> GpuSampler:
        self._proc = subprocess.Popen(
            ["nvidia-smi", "--id=0", f"--query-gpu={','.join(self.fields)}",
             "--format=csv,noheader,nounits", "-lms", str(self.interval_ms)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        threading.Thread(target=self._read, args=(self._proc,), daemon=True).start()
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.add(time.time(), line)

    def add(self, at: float, line: str) -> None:
        """One line of nvidia-smi's CSV, read at host time ``at``."""
        values = [v.strip() for v in line.split(",")]
        if len(values) != len(self.fields):
            return
        reading = {}
        for field, value in zip(self.fields, values, strict=True):
            try:
                reading[field] = float(value)
            except ValueError:
                continue
        if reading:
            self.samples.append((at, reading))

    def readings(self, field: str, start: float, end: float) -> list[float]:
        return [r[field] for t, r in self.samples if start <= t <= end and field in r]

    def median(self, field: str, start: float, end: float) -> float | None:
        window = self.readings(field, start, end)
        return statistics.median(window) if window else None

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative Frobenius error, in float64."""
    a, e = actual.double(), expected.double()
    return float(((a - e).norm() / e.norm()).item())


# Kernel families by name, first match wins: how a step's device time splits (`kernel_profile`).
# Inductor's kernels ("triton_poi_fused_...", "triton_red_fused_...") come first: their names
# list the ops fused into them, "_scaled_mm" or "gelu" among them, whatever they compute.
KERNEL_FAMILIES = {
    "inductor": ("triton_poi_", "triton_red_", "triton_per_"),
    "gemm": ("_fp8_matmul", "gemm", "nvjet", "xmma", "cutlass"),
    "attention": ("flash", "fmha", "sdpa"),
    "fp8_cast": ("cast_transpose", "saturating_cast"),
    "optimizer": ("multi_tensor", "adam"),
}


def kernel_family(name: str) -> str:
    """The `KERNEL_FAMILIES` entry a kernel's name falls in, else "other" (eager norms,
    residuals, activations, copies)."""
    lowered = name.lower()
    for family, needles in KERNEL_FAMILIES.items():
        if any(lowered.startswith(n) if n.startswith("triton_") else n in lowered for n in needles):
            return family
    return "other"


def kernel_profile(run_step: Callable[[], Any], steps: int, *, top: int = 12) -> dict[str, Any]:
    """Device time per step of ``run_step`` from the torch profiler, over ``steps`` steps: the
    sum of its kernels' durations (``kernel_ms``), that sum by `kernel_family`, and the
    ``top`` kernels. Kernels on concurrent streams each count whole."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            run_step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    # Leaf kernels only: profiler ranges that contain kernels would count them twice.
    kernels = [e for e in events if not e.key.startswith(("aten::", "autograd::", "Optimizer"))]
    families: dict[str, float] = {}
    for e in kernels:
        family = kernel_family(e.key)
        families[family] = families.get(family, 0.0) + e.device_time_total / steps / 1e3
    ranked = sorted(kernels, key=lambda e: -e.device_time_total)[:top]
    return {
        "kernel_ms": sum(e.device_time_total for e in kernels) / steps / 1e3,
        "family_ms": dict(sorted(families.items(), key=lambda kv: -kv[1])),
        "top_kernels": [
            {"kernel": e.key[:90], "us_per_step": e.device_time_total / steps, "calls": e.count}
            for e in ranked
        ],
    }
