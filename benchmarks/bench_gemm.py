"""FP8 GEMM throughput: our Triton kernel against cuBLAS (``torch._scaled_mm``), side by side.

Forward shapes of µS layers: M = 16384 tokens, K in {1024, 2048, 4096, 8192}, N in {K, 4K};
e4m3 x e4m3 -> bf16 with the static 1/sqrt(K) fused in the epilogue (cuBLAS gets it as
``scale_a``, also fused). ``--backward`` adds the MLP's backward GEMMs: e5m2 x e4m3 -> bf16
(input gradient) and -> fp32 (weight gradient, reduction over the 16384 tokens).

cuBLAS runs twice: with ``use_fast_accum=True`` (the tensor cores' own accumulation, as
our default kernel) and with its default (periodic promotion to fp32, as our
``precise_acc``). The error column is the relative Frobenius error against float64 on the
first 1024 rows.

Times are medians of CUDA-graph replays (the kernels' own time); ``*_call_ms`` time one
eager call each for ours and cuBLAS, launch overhead included (it shows at K = 1024, where a
GEMM takes ~40 us).

``--sweep`` also times every TMA config (and warp specialisation) outside the autotuner.

    python -m benchmarks.bench_gemm [--backward] [--sweep] [--out NAME]
"""

from __future__ import annotations

import argparse
import itertools
from typing import Any

import torch

from benchmarks.common import bench_graph_ms, bench_ms, environment, rel_err, write_json
from kernels import E4M3, E5M2, saturating_cast
from kernels.ops import best_configs
from kernels.triton_gemm import fp8_matmul

M = 16384
WIDTHS = (1024, 2048, 4096, 8192)


def forward_shapes() -> list[dict[str, Any]]:
    return [
        {"kind": "forward", "M": M, "N": n, "K": k, "a": E4M3, "out": torch.bfloat16}
        for k in WIDTHS
        for n in (k, 4 * k)
    ]


def backward_shapes() -> list[dict[str, Any]]:
    shapes = []
    for d in WIDTHS[:3]:
        for n, k in ((d, 4 * d), (4 * d, d)):  # input gradients of fc1 and fc2
            shapes.append(
                {"kind": "dgrad", "M": M, "N": n, "K": k, "a": E5M2, "out": torch.bfloat16}
            )
        for n_out, k_out in ((4 * d, d), (d, 4 * d)):  # weight gradients: reduce over tokens
            shapes.append(
                {"kind": "wgrad", "M": n_out, "N": k_out, "K": M, "a": E5M2, "out": torch.float32}
            )
    return shapes


def scaled_mm(
    a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype, fast: bool
) -> torch.Tensor:
    one = torch.ones((), device=a.device)
    # cuBLAS wants the second operand column-major: b is (N, K) row-major, so b.t() is.
    return torch._scaled_mm(
        a, b.t(), scale_a=scale, scale_b=one, out_dtype=out_dtype, use_fast_accum=fast
    )


def tflops(m: int, n: int, k: int, ms: float) -> float:
    return 2.0 * m * n * k / (ms * 1e-3) / 1e12


def run_shape(shape: dict[str, Any]) -> dict[str, Any]:
    m, n, k = shape["M"], shape["N"], shape["K"]
    a = saturating_cast(torch.randn(m, k, device="cuda"), shape["a"])
    b = saturating_cast(torch.randn(n, k, device="cuda"), E4M3)
    scale = k**-0.5
    scale_t = torch.tensor(scale, device="cuda")
    out_dtype = shape["out"]
    # Our TMA kernel itself: "auto", what the layers run, would take cuBLAS where it is faster.
    variants = {
        "ours": lambda: fp8_matmul(a, b, scale=scale, out_dtype=out_dtype, kernel="tma"),
        "ours_precise": lambda: fp8_matmul(
            a, b, scale=scale, out_dtype=out_dtype, precise_acc=True, kernel="tma"
        ),
        "cublas_fast_accum": lambda: scaled_mm(a, b, scale_t, out_dtype, True),
        "cublas": lambda: scaled_mm(a, b, scale_t, out_dtype, False),
    }
    rows = min(m, 1024)
    exact = (a[:rows].double() @ b.double().T) * scale
    result: dict[str, Any] = {
        "kind": shape["kind"],
        "M": m,
        "N": n,
        "K": k,
        "a_dtype": str(shape["a"]).removeprefix("torch."),
        "out_dtype": str(out_dtype).removeprefix("torch."),
    }
    for name, fn in variants.items():
        out = fn()  # also compiles and autotunes, outside the graph capture
        ms = bench_graph_ms(fn)
        result[f"{name}_ms"] = round(ms, 4)
        if name in ("ours", "cublas_fast_accum"):
            result[f"{name}_call_ms"] = round(bench_ms(fn), 4)
        result[f"{name}_tflops"] = round(tflops(m, n, k, ms), 1)
        result[f"{name}_err"] = float(f"{rel_err(out[:rows], exact):.3e}")
    result["ratio_vs_cublas_fast_accum"] = round(
        result["cublas_fast_accum_ms"] / result["ours_ms"], 3
    )
    result["ratio_vs_cublas"] = round(result["cublas_ms"] / result["ours_ms"], 3)
    result["ratio_precise_vs_cublas"] = round(result["cublas_ms"] / result["ours_precise_ms"], 3)
    torch.cuda.empty_cache()
    return result


def sweep_configs() -> list[dict[str, Any]]:
    base = [
        (128, 256, 128, 3, 8, 2),
        (128, 256, 128, 4, 8, 4),
        (128, 256, 64, 4, 8, 2),
        (128, 256, 64, 5, 8, 4),
        (256, 128, 128, 3, 8, 2),
        (256, 128, 64, 4, 8, 2),
        (128, 128, 128, 4, 8, 1),
        (128, 128, 128, 5, 4, 2),
        (128, 128, 256, 3, 8, 2),
        (64, 256, 128, 4, 4, 2),
    ]
    configs = []
    for (bm, bn, bk, s, w, sp), ws in itertools.product(base, (False, True)):
        configs.append(
            {
                "BLOCK_M": bm,
                "BLOCK_N": bn,
                "BLOCK_K": bk,
                "GROUP_M": 8,
                "EPILOGUE_SPLIT": sp,
                "num_stages": s,
                "num_warps": w,
                "WARP_SPECIALIZE": ws,
            }
        )
    return configs


def sweep_shape(shape: dict[str, Any]) -> list[dict[str, Any]]:
    m, n, k = shape["M"], shape["N"], shape["K"]
    a = saturating_cast(torch.randn(m, k, device="cuda"), shape["a"])
    b = saturating_cast(torch.randn(n, k, device="cuda"), E4M3)
    out = torch.empty((m, n), device="cuda", dtype=shape["out"])
    rows = []
    for cfg in sweep_configs():
        try:
            fp8_matmul(a, b, out=out, out_dtype=shape["out"], kernel="tma", config=cfg)
            ms = bench_ms(
                lambda cfg=cfg: fp8_matmul(
                    a, b, out=out, out_dtype=shape["out"], kernel="tma", config=cfg
                ),
                warmup=20,
                rep=100,
            )
            rows.append({**cfg, "ms": round(ms, 4), "tflops": round(tflops(m, n, k, ms), 1)})
        except Exception as e:  # out of shared memory, or WS unsupported on this GPU/Triton
            rows.append({**cfg, "error": f"{type(e).__name__}: {str(e)[:160]}"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backward", action="store_true", help="add the backward GEMMs")
    parser.add_argument("--sweep", action="store_true", help="time each TMA config explicitly")
    parser.add_argument("--out", default="gemm", help="JSON name under benchmarks/results/")
    args = parser.parse_args()

    torch.manual_seed(0)
    shapes = forward_shapes() + (backward_shapes() if args.backward else [])
    results = []
    header = f"{'kind':7} {'M':>6} {'N':>6} {'K':>6} | {'ours':>7} {'precise':>7} "
    header += f"{'cuBLASf':>7} {'cuBLAS':>7} TFLOP/s | {'x fast':>6} {'x cuBLAS':>8} | err"
    print(header)
    payload: dict[str, Any] = {"environment": environment(), "results": results}
    for shape in shapes:
        r = run_shape(shape)
        results.append(r)
        payload["autotuned"] = best_configs()
        write_json(args.out, payload)  # as it goes: a run cut short keeps what it measured
        print(
            f"{r['kind']:7} {r['M']:6} {r['N']:6} {r['K']:6} | {r['ours_tflops']:7.1f} "
            f"{r['ours_precise_tflops']:7.1f} {r['cublas_fast_accum_tflops']:7.1f} "
            f"{r['cublas_tflops']:7.1f}         | {r['ratio_vs_cublas_fast_accum']:6.3f} "
            f"{r['ratio_vs_cublas']:8.3f} | {r['ours_err']:.1e} {r['cublas_fast_accum_err']:.1e}",
            flush=True,
        )
    if args.sweep:
        payload["sweep"] = {}
        for shape in forward_shapes():
            key = f"{shape['M']}x{shape['N']}x{shape['K']}"
            rows = sweep_shape(shape)
            payload["sweep"][key] = rows
            ok = [r for r in rows if "ms" in r]
            best = sorted(ok, key=lambda r: r["ms"])[:3]
            print(
                f"sweep {key}: "
                + "; ".join(
                    f"{r['BLOCK_M']}x{r['BLOCK_N']}x{r['BLOCK_K']} s{r['num_stages']} "
                    f"w{r['num_warps']} sp{r['EPILOGUE_SPLIT']} ws{int(r['WARP_SPECIALIZE'])} "
                    f"{r['tflops']}"
                    for r in best
                )
                + f" | failed {len(rows) - len(ok)}",
                flush=True,
            )
    path = write_json(args.out, payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
