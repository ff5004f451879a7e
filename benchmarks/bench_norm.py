"""A µS sub-layer's end: Res-Post-LN, residual and the next layer's e4m3 operands, fused or not.

``y = skip * x + branch * LayerNorm(f) * gain``, then e4m3(y) row-major (M, C) and
transposed (C, M), x fp32 (the trainer's residual stream under bf16 autocast; ``--x-dtype
bf16`` for a bf16 one), f bf16, gain fp32. Variants, all measured in one run:

* ``fused``: `kernels.triton_norm.res_post_norm` (forward) / `res_post_norm_fp8` (forward
  and backward): one kernel for y, both FP8 copies and the row statistics, and one
  (`res_post_norm_backward`) for dx, df and dgain.
* ``eager``: the model's path today, in torch: ``skip * x + branch * layer_norm(f.float(),
  gain)`` (what autocast runs: layer_norm in fp32), then
  `kernels.triton_casts.cast_transpose(y)` (for an fp32 y its two-pass workaround).
* ``compiled``: the same under ``torch.compile`` with the casts as torch ops (``clamp``,
  ``.to(float8_e4m3fn)``, ``.t().contiguous()``), for inductor to fuse as it will.

Time (``ms``) is the median of CUDA-event timings of eager calls (triton's do_bench),
launch overhead included; ``graph_ms`` the same call replayed from a CUDA graph (GPU time
alone). ``gb_s`` is the least traffic the work must move divided by ``ms``: forward reads
x, f and writes y, y8, y8t (``2 * x_bytes + f_bytes + 2`` bytes an element), backward reads
dy, f and writes dx, df (``2 * x_bytes + 2 * f_bytes``); ratios are ``<variant> / fused``
(above 1: the fused kernel is faster). Phases: ``forward``, ``backward`` (alone: the
graph of one forward, differentiated again each call with ``retain_graph``) and
``forward_backward``. ``tiles`` times the fused forward with
`candidate_configs` (`norm_config`'s fixed choice among them), to check that choice.
``backward_e5m2`` times the backward that also hands the FP8 layer before the norm its
output gradient's e5m2 operands, row-major and transposed: ``fused`` in the backward kernel
(``res_post_norm_backward(grad_scale=, f_cols=True)``, what the model runs), ``separate``
the bf16 df then `cast_transpose` (``gb_s`` from the fused form's least traffic: reads dy,
f, writes dx and two FP8 copies).

    python -m benchmarks.bench_norm [--tokens 16384 65536] [--widths 1024 2048 4096 8192]
    python -m benchmarks.bench_norm --tiny   # CPU, TRITON_INTERPRET=1: the CPU test's run
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import RESULTS, bench_graph_ms, bench_ms, environment, write_json
from kernels import E4M3, E4M3_MAX, E5M2

TAU = 0.3  # any branch weight: the work does not depend on it
SKIP, BRANCH, EPS = math.sqrt(1 - TAU), math.sqrt(TAU), 1e-5
TINY = {"tokens": [64], "widths": [96]}
PHASES = ("forward", "backward", "forward_backward")
GRAD_SCALE = 2.0**16  # the e5m2 casts' factor: any, the work does not depend on it


def candidate_configs(c: int) -> list[dict[str, int]]:
    """`norm_config`'s choice for width ``c`` and a few others around it: rows per program
    16 to 64, tiles of 4096 or 8192 elements, 4 or 8 warps."""
    from kernels.triton_norm import norm_config

    p2 = 1 << max(c - 1, 0).bit_length()
    configs = [norm_config(c)] + [
        {"BLOCK_M": bm, "BLOCK_C": min(p2, bc), "num_warps": w}
        for bm, bc, w in [(16, 512, 8), (32, 256, 8), (64, 128, 8), (32, 128, 4), (16, 256, 4)]
    ]
    return [dict(t) for t in dict.fromkeys(tuple(sorted(cfg.items())) for cfg in configs)]


def eager_forward(
    x: torch.Tensor, f: torch.Tensor, gain: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from kernels.triton_casts import cast_transpose

    y = SKIP * x + BRANCH * F.layer_norm(f.float(), (f.shape[1],), gain, None, EPS)
    y = y.to(x.dtype)
    y8, y8t = cast_transpose(y.detach(), E4M3)
    assert y8 is not None and y8t is not None
    return y, y8, y8t


def torch_forward(
    x: torch.Tensor, f: torch.Tensor, gain: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The compiled variant's source: every step a torch op inductor may fuse."""
    y = SKIP * x + BRANCH * F.layer_norm(f.float(), (f.shape[1],), gain, None, EPS)
    y = y.to(x.dtype)
    y8 = y.detach().float().clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return y, y8, y8.t().contiguous()


def fused_forward(
    x: torch.Tensor, f: torch.Tensor, gain: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from kernels.triton_norm import res_post_norm_fp8

    return res_post_norm_fp8(x, f, gain, skip=SKIP, branch=BRANCH, eps=EPS)


def cpu_ms(fn: Callable[[], Any], reps: int = 3) -> float:
    """Median wall time in ms on the CPU (the tiny run: the interpreter, nothing to time)."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def timed(fn: Callable[[], Any], bytes_moved: int, cuda: bool) -> dict[str, Any]:
    fn()  # compile, warm caches
    ms = bench_ms(fn) if cuda else cpu_ms(fn)
    result: dict[str, Any] = {"ms": round(ms, 4), "gb_s": round(bytes_moved / ms / 1e6, 1)}
    if cuda:
        try:
            result["graph_ms"] = round(bench_graph_ms(fn), 4)
        except Exception as e:  # a variant that cannot be captured: record it, go on
            result["graph_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    return result


def measure(m: int, c: int, x_dtype: torch.dtype, device: str, compiler: str) -> dict[str, Any]:
    from kernels.triton_casts import cast_transpose
    from kernels.triton_norm import res_post_norm, res_post_norm_backward

    cuda = device == "cuda"
    x = torch.randn(m, c, device=device, dtype=x_dtype)
    f = (torch.randn(m, c, device=device) * 2 + 0.5).to(torch.bfloat16)
    gain = 1 + 0.1 * torch.randn(c, device=device)
    dy = torch.randn(m, c, device=device, dtype=x_dtype)
    xs, fs = x.element_size(), f.element_size()
    fwd_bytes = m * c * (2 * xs + fs + 2) + 4 * c + 8 * m
    bwd_bytes = m * c * (2 * xs + 2 * fs) + 8 * c + 8 * m

    compiled = torch.compile(torch_forward, backend=compiler)
    forwards = {"fused": fused_forward, "eager": eager_forward, "compiled": compiled}
    row: dict[str, Any] = {**{phase: {} for phase in PHASES}, "tiles": {}, "backward_e5m2": {}}
    with torch.no_grad():
        for name, fn in forwards.items():
            row["forward"][name] = run_variant(lambda fn=fn: fn(x, f, gain), fwd_bytes, cuda)
        # The same work? y may differ by an fp32 rounding (summation order), which moves the
        # few codes within it of an e4m3 rounding boundary: counted, not required equal.
        fused, eager = fused_forward(x, f, gain), eager_forward(x, f, gain)
        row["fused_vs_eager"] = {
            "y_max_abs_diff": float((fused[0].float() - eager[0].float()).abs().max()),
            **{
                f"{name}_codes_differing": int((a.view(torch.uint8) != b.view(torch.uint8)).sum())
                for name, a, b in (("y8", fused[1], eager[1]), ("y8t", fused[2], eager[2]))
            },
            "elements": m * c,
        }
        for config in candidate_configs(c):
            key = "{BLOCK_M}x{BLOCK_C}w{num_warps}".format(**config)
            row["tiles"][key] = run_variant(
                lambda config=config: res_post_norm(
                    x, f, gain, skip=SKIP, branch=BRANCH, config=config
                ),
                fwd_bytes,
                cuda,
            )

        _, _, _, mean, rstd = res_post_norm(x, f, gain, skip=SKIP, branch=BRANCH)
        stats = (dy, f, gain, mean, rstd)
        backward = functools.partial(
            res_post_norm_backward, *stats, skip=SKIP, branch=BRANCH, x_dtype=x_dtype
        )
        e5m2 = {
            "fused": lambda: backward(grad_scale=GRAD_SCALE, f_cols=True),
            "separate": lambda: cast_transpose(backward().df, E5M2, GRAD_SCALE),
        }
        e5m2_bytes = m * c * (2 * xs + fs + 2) + 8 * c + 8 * m
        for name, fn in e5m2.items():
            row["backward_e5m2"][name] = run_variant(fn, e5m2_bytes, cuda)

    leaves = [t.requires_grad_() for t in (x, f, gain)]

    def step(fn: Callable[..., tuple[torch.Tensor, ...]]) -> None:
        for t in leaves:
            t.grad = None
        fn(*leaves)[0].backward(dy)

    def backward_alone(fn: Callable[..., tuple[torch.Tensor, ...]]) -> Callable[[], Any]:
        # One forward's graph (made on the first call, inside run_variant's guard),
        # differentiated again at every call.
        forward = functools.cache(lambda: fn(*leaves)[0])
        return lambda: torch.autograd.grad(forward(), leaves, dy, retain_graph=True)

    for name, fn in forwards.items():
        row["backward"][name] = run_variant(backward_alone(fn), bwd_bytes, cuda)
        row["forward_backward"][name] = run_variant(
            lambda fn=fn: step(fn), fwd_bytes + bwd_bytes, cuda
        )
    for phase in (*PHASES, "backward_e5m2"):
        fused_ms = row[phase]["fused"].get("ms")
        row[phase]["ratio_to_fused"] = {
            name: round(v["ms"] / fused_ms, 3)
            for name, v in row[phase].items()
            if fused_ms and isinstance(v, dict) and "ms" in v
        }
    torch._dynamo.reset()
    return row


def run_variant(fn: Callable[[], Any], bytes_moved: int, cuda: bool) -> dict[str, Any]:
    try:
        return timed(fn, bytes_moved, cuda)
    except Exception as e:  # e.g. out of memory at the largest shape: record it, go on
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[16384, 65536])
    parser.add_argument("--widths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--x-dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--tiny", action="store_true", help=f"CPU, the interpreter: {TINY}")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_norm.json")
    args = parser.parse_args(argv)

    if args.tiny:
        if os.environ.get("TRITON_INTERPRET") != "1":
            parser.error("--tiny runs the kernels on the CPU: set TRITON_INTERPRET=1")
        args.tokens, args.widths = TINY["tokens"], TINY["widths"]
        device, compiler = "cpu", "aot_eager"  # inductor's CPU build is not what is measured
    else:
        if not torch.cuda.is_available():
            parser.error("needs a CUDA GPU (or --tiny)")
        device, compiler = "cuda", "inductor"
    x_dtype = torch.float32 if args.x_dtype == "fp32" else torch.bfloat16
    torch.manual_seed(0)
    results: dict[str, Any] = {}
    path = args.out
    for m in args.tokens:
        for c in args.widths:
            row = measure(m, c, x_dtype, device, compiler)
            results[f"{m}x{c}"] = row
            print(f"M={m} C={c}: {row}", flush=True)
            # written after every shape, so that a run cut short keeps what it measured
            payload = {
                "environment": environment(),
                "x_dtype": args.x_dtype,
                "f_dtype": "bf16",
                "results": results,
            }
            path = write_json(args.out.stem, payload, directory=args.out.parent)
    print(f"wrote {path}")
    for shape, row in results.items():
        for phase in (*PHASES, "backward_e5m2"):
            ms = {n: v["ms"] for n, v in row[phase].items() if isinstance(v, dict) and "ms" in v}
            print(f"{shape} {phase}: ms {ms}, ratio to fused {row[phase]['ratio_to_fused']}")
    return path


if __name__ == "__main__":
    main()
