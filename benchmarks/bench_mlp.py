"""µS MLP block forward + backward: our FP8 kernels against BF16 and two FP8 alternatives.

Block: ``x (M, K) -> Linear(K, 4K) -> GELU -> Linear(4K, K)``, M = 16384 tokens, no biases,
bf16 activations and weights (``ours_fp32_master`` keeps fp32 weights, as the µS trainer
does). Variants, all measured in one run:

* ``bf16_eager`` / ``bf16_compiled``: ``nn.Linear`` in bf16, eager and ``torch.compile``.
* ``torchao_dynamic_compiled``: torchao ``convert_to_float8_training`` (dynamic tensorwise
  scales), compiled.
* ``static_scaled_mm_compiled``: what a user could write in an afternoon: static µS scales,
  saturating casts in torch, ``torch._scaled_mm`` (fast accumulation) for all three GEMMs,
  the whole block under ``torch.compile`` so inductor fuses casts and transposes.
* ``ours_eager`` / ``ours_compiled``: `kernels.fp8_gelu_mlp` (Triton), what the µS model
  runs: GELU, its backward and the FP8 casts around them in one cast + transpose of each
  GEMM's output.
* ``ours_unfused_compiled``: two `kernels.fp8_linear` layers with torch's GELU between,
  compiled (inductor fuses GELU and its backward around our opaque kernels): what the fused
  op replaces.

Time (``ms``) is the median of CUDA-event timings of eager calls (triton's do_bench), launch
overhead included; ``graph_ms`` replays the same step from a CUDA graph (GPU time alone).
Memory is the peak allocated during one forward + backward above what was allocated before
it (inputs, weights).

    python -m benchmarks.bench_mlp [--widths 1024 2048 4096] [--out NAME]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from benchmarks.common import bench_graph_ms, bench_ms, environment, write_json
from kernels import E4M3, E4M3_MAX, E5M2, E5M2_MAX

M = 16384


class StaticScaledMM(torch.autograd.Function):
    """Static-scale FP8 linear on ``torch._scaled_mm``: the baseline to beat."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, w: torch.Tensor, scale: float, gs: float
    ) -> torch.Tensor:
        x8 = x.reshape(-1, x.shape[-1]).float().clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)  # (M, K)
        w8 = w.float().clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)  # (N, K)
        s = torch.tensor(scale, device=x.device)
        one = torch.ones((), device=x.device)
        y = torch._scaled_mm(
            x8, w8.t(), scale_a=s, scale_b=one, out_dtype=torch.bfloat16, use_fast_accum=True
        )
        ctx.save_for_backward(x8, w8)
        ctx.scale, ctx.gs, ctx.w_dtype, ctx.x_shape = scale, gs, w.dtype, x.shape
        return y.reshape(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x8, w8 = ctx.saved_tensors
        g8 = (gy.reshape(-1, gy.shape[-1]).float() * ctx.gs).clamp(-E5M2_MAX, E5M2_MAX).to(E5M2)
        s = torch.tensor(ctx.scale / ctx.gs, device=gy.device)
        one = torch.ones((), device=gy.device)
        # cuBLAS wants mat1 row-major and mat2 column-major: transposed copies where needed.
        gx = torch._scaled_mm(
            g8,
            w8.t().contiguous().t(),
            scale_a=s,
            scale_b=one,
            out_dtype=torch.bfloat16,
            use_fast_accum=True,
        )
        gw = torch._scaled_mm(
            g8.t().contiguous(),
            x8.t().contiguous().t(),
            scale_a=s,
            scale_b=one,
            out_dtype=ctx.w_dtype,
            use_fast_accum=True,
        )
        return gx.reshape(ctx.x_shape), gw, None, None


class FP8MLP(nn.Module):
    """The µS MLP: two FP8 linear layers ``linear(x, w, scale=, grad_scale=)`` with GELU
    between, or without ``linear`` our fused `kernels.fp8_gelu_mlp`."""

    def __init__(
        self, k: int, dtype: torch.dtype, linear: Callable[..., torch.Tensor] | None = None
    ):
        super().__init__()
        self.linear = linear
        self.w1 = nn.Parameter(torch.randn(4 * k, k, device="cuda", dtype=dtype))
        self.w2 = nn.Parameter(torch.randn(k, 4 * k, device="cuda", dtype=dtype))
        self.grad_scale = float(M)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.w1.shape[1]
        scales = (k**-0.5, (4 * k) ** -0.5)
        if self.linear is None:
            return kernels.fp8_gelu_mlp(
                x, self.w1, self.w2, scales=scales, grad_scale=self.grad_scale
            )
        h = self.linear(x, self.w1, scale=scales[0], grad_scale=self.grad_scale)  # (M, 4K)
        return self.linear(F.gelu(h), self.w2, scale=scales[1], grad_scale=self.grad_scale)


def static_linear(x: torch.Tensor, w: torch.Tensor, *, scale: float, grad_scale: float) -> Any:
    return StaticScaledMM.apply(x, w, scale, grad_scale)


def bf16_mlp(k: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(k, 4 * k, bias=False), nn.GELU(), nn.Linear(4 * k, k, bias=False)
    ).to("cuda", torch.bfloat16)


def torchao_mlp(k: int) -> nn.Module:
    from torchao.float8 import convert_to_float8_training

    return convert_to_float8_training(bf16_mlp(k))


def variants(k: int) -> dict[str, Callable[[], nn.Module]]:
    return {
        "bf16_eager": lambda: bf16_mlp(k),
        "bf16_compiled": lambda: torch.compile(bf16_mlp(k)),
        "torchao_dynamic_compiled": lambda: torch.compile(torchao_mlp(k)),
        "static_scaled_mm_compiled": lambda: torch.compile(
            FP8MLP(k, torch.bfloat16, static_linear)
        ),
        "ours_eager": lambda: FP8MLP(k, torch.bfloat16),
        "ours_compiled": lambda: torch.compile(FP8MLP(k, torch.bfloat16)),
        "ours_unfused_compiled": lambda: torch.compile(
            FP8MLP(k, torch.bfloat16, kernels.fp8_linear)
        ),
        "ours_fp32_master_compiled": lambda: torch.compile(FP8MLP(k, torch.float32)),
    }


def measure(make: Callable[[], nn.Module], k: int, profile: bool = False) -> dict[str, Any]:
    torch.cuda.empty_cache()
    model = make()
    x = torch.randn(M, k, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    gy = torch.randn(M, k, device="cuda", dtype=torch.bfloat16)
    params = list(model.parameters())

    def step() -> None:
        model(x).backward(gy)

    for _ in range(3):  # compile, autotune, warm caches
        step()
        x.grad = None
        for p in params:
            p.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
    ms = bench_ms(step, warmup=100, rep=500)
    result: dict[str, Any] = {"ms": round(ms, 3), "peak_mib": round(peak_mib, 1)}
    try:  # the same step replayed from a CUDA graph: GPU time without launch overhead
        result["graph_ms"] = round(bench_graph_ms(step, rep=300), 3)
    except Exception as e:
        result["graph_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    if profile:  # where the time goes: kernels on the GPU, and the CPU's launch overhead
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--widths", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    parser.add_argument("--out", default="mlp", help="JSON name under benchmarks/results/")
    parser.add_argument("--profile", nargs="*", default=[], help="variants to profile")
    args = parser.parse_args()

    torch.manual_seed(0)
    results: dict[str, Any] = {}
    for k in args.widths:
        row: dict[str, Any] = {}
        for name, make in variants(k).items():
            if args.only and name not in args.only:
                continue
            try:
                profile = name in args.profile and k == args.widths[0]
                row[name] = measure(make, k, profile=profile)
            except Exception as e:  # e.g. torchao missing: record it, keep measuring the rest
                row[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            torch._dynamo.reset()
            print(f"K={k} {name}: {row[name]}", flush=True)
        ours = row.get("ours_compiled", {}).get("ms")
        if ours:
            row["speedup_ours_compiled"] = {
                name: round(v["ms"] / ours, 3)
                for name, v in row.items()
                if isinstance(v, dict) and "ms" in v
            }
        results[str(k)] = row
        # Written after every width, so that a run cut short keeps what it measured.
        path = write_json(args.out, {"environment": environment(), "M": M, "results": results})
    print(f"wrote {path}")
    for k, row in results.items():
        print(
            f"K={k}: "
            + ", ".join(
                f"{n} {v['ms']} ms / {v['peak_mib']} MiB" for n, v in row.items() if "ms" in v
            )
        )
        if "speedup_ours_compiled" in row:
            print(f"K={k} speedup of ours_compiled: {row['speedup_ours_compiled']}")


if __name__ == "__main__":
    main()
