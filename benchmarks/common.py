"""Shared by the benchmarks: environment record, timing, JSON output."""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Callable
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


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative Frobenius error, in float64."""
    a, e = actual.double(), expected.double()
    return float(((a - e).norm() / e.norm()).item())
