"""The Triton FP8 kernels on a GPU, against the emulation (`kernels.fp8`) and BF16.

Stated tolerances (relative Frobenius error, float64 reference):
* casts: bit-exact, NaN stays NaN, overflow saturates.
* GEMM with fp32 output: the FP8 products are exact, so only accumulation differs from the
  float64 reference. Hopper's FP8 tensor cores accumulate with fewer bits than fp32 (the
  "fast accumulation" of cuBLAS): GEMM_FP32_FAST bounds that; with PRECISE_ACC (promotion to
  fp32 every BLOCK_K products) the error is that of an fp32 sum, GEMM_FP32_PRECISE.
* GEMM with bf16 output: one bf16 rounding (RMS ~1.6e-3 relative) on top: GEMM_BF16.
* fp8_linear against the emulation: the same FP8 operands, so the difference is the GEMMs'
  (bf16 output for y and grad_x, fp32 for grad_w); against a BF16 linear, the FP8 rounding
  bounds of test_fp8_reference.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import triton

import kernels
from kernels import E4M3, E5M2, fp8_linear_reference, saturating_cast

if not torch.cuda.is_available():
    pytest.skip(
        "needs a CUDA GPU (the CPU runs these kernels in test_fp8_interpreter.py)",
        allow_module_level=True,
    )

from fp8_helpers import (
    FWD_VS_BF16,
    GRAD_W_VS_BF16,
    GRAD_X_VS_BF16,
    bf16_linear_grads,
    rel_err,
)

from kernels import triton_casts, triton_gemm

# Measured on an H100 (benchmarks/results/gemm.json): fp32 outputs 2.7e-3 at K = 16384 with
# fast accumulation, 1.0e-4 with promotion, the same as cuBLAS in each mode; bf16 outputs
# 1.7e-3 to 3.2e-3.
GEMM_FP32_FAST = 4e-3
GEMM_FP32_PRECISE = 3e-4
GEMM_BF16 = 5e-3
HAS_TMA = torch.cuda.get_device_capability()[0] >= 9

DEVICE = "cuda"


def wide_range(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Random values over many binades (subnormal to overflow in both FP8 formats), plus
    NaN, ±inf and exact ties."""
    x = torch.randn(shape, device=DEVICE) * torch.exp2(
        torch.empty(shape, device=DEVICE).uniform_(-20, 18)
    )
    flat = x.view(-1)
    flat[:6] = torch.tensor([math.nan, math.inf, -math.inf, 1e30, 400.0, 2.25])
    return x.to(dtype)


@pytest.mark.parametrize("fp8", [E4M3, E5M2])
@pytest.mark.parametrize("source", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scale", [1.0, 3.0, 2.0**20])
def test_saturating_cast_is_bit_exact(fp8: torch.dtype, source: torch.dtype, scale: float) -> None:
    x = wide_range((1000, 777), source)
    y = triton_casts.saturating_cast(x, fp8, scale)
    ref = saturating_cast(x.float() * scale, fp8)
    nan = ref.float().isnan()
    assert torch.equal(y.float().isnan(), nan)
    assert torch.equal(y.view(torch.uint8)[~nan], ref.view(torch.uint8)[~nan])


CAST_CONFIGS = [None] + [
    {**c.kwargs, "num_warps": c.num_warps} for c in triton_casts._cast_transpose_configs()
]  # None: autotuned
# (FP8 format, input dtype): activations and fp32 master weights to e4m3, gradients to e5m2.
CAST_CASES = [(E4M3, torch.float32), (E4M3, torch.bfloat16), (E5M2, torch.bfloat16)]


def check_cast_transpose(x: torch.Tensor, fp8: torch.dtype, config: dict[str, int] | None) -> None:
    ref = saturating_cast(x.float() * 64.0, fp8)
    y, yt = triton_casts.cast_transpose(x, fp8, 64.0, config=config)
    assert y is not None and yt is not None
    nan = ref.float().isnan()
    assert torch.equal(y.float().isnan(), nan) and torch.equal(yt.float().isnan(), nan.t())
    ref_bits = ref.view(torch.uint8).masked_fill(nan, 0)
    assert torch.equal(y.view(torch.uint8).masked_fill(nan, 0), ref_bits)
    assert torch.equal(yt.view(torch.uint8).masked_fill(nan.t(), 0), ref_bits.t())


@pytest.mark.parametrize(("fp8", "source"), CAST_CASES)
@pytest.mark.parametrize("config", CAST_CONFIGS)
@pytest.mark.parametrize("shape", [(4096, 1024), (1000, 777)])
def test_cast_transpose_is_bit_exact(
    fp8: torch.dtype, source: torch.dtype, config: dict[str, int] | None, shape: tuple[int, int]
) -> None:
    check_cast_transpose(wide_range(shape, source), fp8, config)


@pytest.mark.parametrize("source", [torch.float32, torch.bfloat16])
def test_cast_transpose_of_a_strided_view(source: torch.dtype) -> None:
    check_cast_transpose(wide_range((768, 1024), source).t(), E4M3, None)


def gemm_operands(m: int, n: int, k: int, a_dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    a = saturating_cast(torch.randn(m, k, device=DEVICE), a_dtype)
    b = saturating_cast(torch.randn(n, k, device=DEVICE), E4M3)
    exact = a.double() @ b.double().T
    return a, b, exact


# Explicit configs, so that each compiles once (autotuning every case would compile them
# all); the autotuned path runs in the fp8_linear tests below and in the benchmarks.
TMA_CONFIGS = [
    {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 128, "EPILOGUE_SPLIT": 2, "num_stages": 3},
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "EPILOGUE_SPLIT": 1, "num_stages": 4},
    {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "EPILOGUE_SPLIT": 4, "num_stages": 4},
]
SIMPLE_CONFIGS = [{"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "num_stages": 4}]
KERNEL_CONFIGS = [("simple", c) for c in SIMPLE_CONFIGS]
if HAS_TMA:
    KERNEL_CONFIGS += [("tma", c) for c in TMA_CONFIGS]
# (A dtype, output dtype, precise accumulation): forward, input gradient, weight gradient.
GEMM_CASES = [
    (E4M3, torch.bfloat16, False),
    (E5M2, torch.bfloat16, False),
    (E5M2, torch.float32, False),
    (E5M2, torch.float32, True),
]


def check_gemm(
    mnk: tuple[int, int, int],
    a_dtype: torch.dtype,
    out_dtype: torch.dtype,
    precise_acc: bool,
    kernel: str,
    config: dict[str, int] | None,
) -> None:
    m, n, k = mnk
    a, b, exact = gemm_operands(m, n, k, a_dtype)
    out = torch.full((m, n), math.nan, device=DEVICE, dtype=out_dtype)  # poisoned
    triton_gemm.fp8_matmul(
        a,
        b,
        scale=k**-0.5,
        out_dtype=out_dtype,
        out=out,
        kernel=kernel,
        precise_acc=precise_acc,
        config=None if config is None else {"GROUP_M": 8, "num_warps": 8, **config},
    )
    assert not out.isnan().any(), "some output elements were not written"
    if out_dtype == torch.bfloat16:
        tol = GEMM_BF16
    else:
        tol = GEMM_FP32_PRECISE if precise_acc else GEMM_FP32_FAST
    assert rel_err(out, exact * k**-0.5) < tol


# cuBLAS (torch._scaled_mm), which "auto" may choose per shape, meets the same bounds.
@pytest.mark.parametrize(("kernel", "config"), [*KERNEL_CONFIGS, ("cublas", None)])
@pytest.mark.parametrize(("a_dtype", "out_dtype", "precise_acc"), GEMM_CASES)
def test_fp8_matmul_error(
    kernel: str,
    config: dict[str, int],
    a_dtype: torch.dtype,
    out_dtype: torch.dtype,
    precise_acc: bool,
) -> None:
    check_gemm((2048, 4096, 1024), a_dtype, out_dtype, precise_acc, kernel, config)


@pytest.mark.parametrize(("kernel", "config"), KERNEL_CONFIGS)
def test_fp8_matmul_partial_tiles(kernel: str, config: dict[str, int]) -> None:
    check_gemm((777, 304, 528), E4M3, torch.bfloat16, False, kernel, config)


@pytest.mark.parametrize("precise_acc", [False, True])
def test_fp8_matmul_long_reduction(precise_acc: bool) -> None:
    """The weight gradient's shape: a reduction over 16k tokens (autotuned)."""
    check_gemm((1024, 512, 16384), E5M2, torch.float32, precise_acc, "auto", None)


@pytest.mark.skipif(not HAS_TMA, reason="the TMA kernel needs Hopper")
@pytest.mark.parametrize(("routing", "kernel"), [("triton", "tma"), ("cublas", "cublas")])
def test_pinned_routing_runs_that_library_for_auto(
    routing: triton_gemm.Routing, kernel: str
) -> None:
    """`route_gemms` makes "auto" run one library at every shape both can take: the same
    bits as asking for that kernel (either one's tiles are its own tuner's, per shape)."""
    a, b, _ = gemm_operands(2048, 4096, 1024, E5M2)
    pinned = triton_gemm.fp8_matmul(a, b, scale=1 / 32, out_dtype=torch.float32, kernel=kernel)
    previous = triton_gemm.route_gemms(routing)
    try:
        auto = triton_gemm.fp8_matmul(a, b, scale=1 / 32, out_dtype=torch.float32)
    finally:
        triton_gemm.route_gemms(previous)
    assert previous == "timed" and torch.equal(auto, pinned)


def test_fp8_matmul_autotuned_matches_configured() -> None:
    a, b, exact = gemm_operands(4096, 2048, 1024, E4M3)
    out = triton_gemm.fp8_matmul(a, b, scale=1 / 32, out_dtype=torch.bfloat16)
    assert rel_err(out, exact / 32) < GEMM_BF16


@pytest.mark.skipif(not HAS_TMA, reason="the TMA kernel needs Hopper")
def test_cold_tuning_compiles_the_candidates_at_once_and_stays_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key no process has tuned: every candidate compiled side by side, then timed, and
    the chosen config's product within the bounds."""
    from kernels import tuning

    monkeypatch.setenv("SWEEPER_KERNEL_CACHE", str(tmp_path))
    tuner = triton_gemm.FP8_MATMUL_TMA
    monkeypatch.setattr(tuner, "_chosen", {})
    monkeypatch.setattr(tuner, "_stored", None)
    batches: list[int] = []
    compile_at_once = tuning.compile_at_once

    def counted(compile: Callable[[triton.Config], object], configs: list[triton.Config]) -> None:
        batches.append(len(configs))
        compile_at_once(compile, configs)

    monkeypatch.setattr(tuning, "compile_at_once", counted)
    check_gemm((777, 304, 528), E4M3, torch.bfloat16, False, "tma", None)
    assert batches == [len(tuner.configs)]
    assert list(tmp_path.glob("fp8_matmul_tma-*.json"))  # the choice was timed and kept


def test_the_tuning_timer_ranks_kernels_by_their_time_and_times_each_enough() -> None:
    """Its short budget still separates a 5 µs kernel from a 0.5 ms one, and a long kernel
    still gets its minimum of timed calls (after one untimed call)."""
    from kernels import tuning

    calls: list[int] = []

    def sleep(cycles: int) -> None:
        calls.append(cycles)
        torch.cuda._sleep(cycles)

    short = tuning.gpu_median_ms(lambda: sleep(10_000))
    long = tuning.gpu_median_ms(lambda: sleep(1_000_000))
    assert short > 0 and long > 20 * short
    assert calls.count(1_000_000) >= tuning.MIN_TIMED_CALLS + 1
    assert calls.count(10_000) > calls.count(1_000_000)  # the short one fits more calls


def test_fp8_matmul_unaligned_falls_back_to_pointer_kernel() -> None:
    a, b, exact = gemm_operands(100, 90, 72, E4M3)  # K = 72: rows not 16-byte aligned for TMA
    out = triton_gemm.fp8_matmul(a, b, scale=1.0, out_dtype=torch.float32)
    assert rel_err(out, exact) < GEMM_FP32_FAST


def linear_case(
    backend: str, x0: torch.Tensor, w0: torch.Tensor, g: torch.Tensor, scale: float, gs: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    before = kernels.fp8_backend()
    kernels.set_fp8_backend(backend)  # type: ignore[arg-type]
    try:
        x = x0.clone().requires_grad_()
        w = w0.clone().requires_grad_()
        y = kernels.fp8_linear(x, w, scale=scale, grad_scale=gs)
        y.backward(g)
    finally:
        kernels.set_fp8_backend(before)
    assert x.grad is not None and w.grad is not None
    return y, x.grad, w.grad


@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float32])
def test_fp8_linear_against_emulation_and_bf16(x_dtype: torch.dtype) -> None:
    tokens, k, n = 4096, 1024, 4096
    x0 = torch.randn(2, tokens // 2, k, device=DEVICE, dtype=x_dtype)
    w0 = torch.randn(n, k, device=DEVICE)  # fp32 master weights
    grad_scale = float(tokens)
    g = torch.randn(2, tokens // 2, n, device=DEVICE) / tokens  # a mean-reduced loss's size
    scale = k**-0.5

    y, gx, gw = linear_case("triton", x0, w0, g, scale, grad_scale)
    assert kernels.uses_triton(x0)
    assert (y.dtype, gx.dtype, gw.dtype) == (torch.bfloat16, x_dtype, torch.float32)
    y_em, gx_em, gw_em = linear_case("emulate", x0, w0, g, scale, grad_scale)
    assert rel_err(y, y_em) < GEMM_BF16
    assert rel_err(gx, gx_em) < (GEMM_BF16 if x_dtype == torch.bfloat16 else GEMM_FP32_FAST)
    assert rel_err(gw, gw_em) < GEMM_FP32_FAST

    y_bf, gx_bf, gw_bf = bf16_linear_grads(x0, w0, g, scale)
    assert rel_err(y, y_bf) < FWD_VS_BF16
    assert rel_err(gx, gx_bf) < GRAD_X_VS_BF16
    assert rel_err(gw, gw_bf) < GRAD_W_VS_BF16


def test_fp8_linear_compiled_matches_eager() -> None:
    """Inductor around the custom ops runs the same kernels on the same operands. Between the
    two layers only an exact op (x2): anything inductor may round differently from eager
    would be amplified by the next e4m3 cast (a bf16 ulp moves ~1.5% of values across an
    e4m3 rounding boundary, each by an e4m3 ulp of 12.5%)."""
    x = torch.randn(4, 256, 512, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    w1 = torch.randn(1024, 512, device=DEVICE, requires_grad=True)
    w2 = torch.randn(512, 1024, device=DEVICE, requires_grad=True)
    g = torch.randn(4, 256, 512, device=DEVICE, dtype=torch.bfloat16)

    def block(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        h = kernels.fp8_linear(x, w1, scale=512**-0.5, grad_scale=1024.0) * 2.0
        return kernels.fp8_linear(h, w2, scale=1024**-0.5, grad_scale=1024.0)

    params = (x, w1, w2)
    y = block(*params)
    y.backward(g)
    grads = [p.grad.clone() for p in params if p.grad is not None]
    for p in params:
        p.grad = None
    y_c = torch.compile(block, fullgraph=True)(*params)
    y_c.backward(g)
    assert rel_err(y_c, y) < 1e-6
    for p, grad in zip(params, grads, strict=True):
        assert p.grad is not None and rel_err(p.grad, grad) < 1e-6


def test_fp8_linear_under_autocast_and_no_grad() -> None:
    x = torch.randn(512, 256, device=DEVICE)
    w = torch.randn(128, 256, device=DEVICE)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y_auto = kernels.fp8_linear(x, w, scale=1 / 16, grad_scale=1.0)
    with torch.no_grad():
        y_eval = kernels.fp8_linear(x, w, scale=1 / 16, grad_scale=1.0)
    y_ref = fp8_linear_reference(x, w, scale=1 / 16, grad_scale=1.0)
    assert rel_err(y_auto, y_ref) < GEMM_BF16 and rel_err(y_eval, y_ref) < GEMM_BF16


def fp8_steps_apart(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """How many FP8 values apart two FP8 tensors of one dtype are, per element (for one
    sign, consecutive codes are consecutive values)."""
    codes = [t.view(torch.uint8).int() for t in (got, want)]
    sign = [c >> 7 for c in codes]
    magnitude = [c & 0x7F for c in codes]
    apart = (magnitude[0] - magnitude[1]).abs()
    return torch.where(sign[0] == sign[1], apart, magnitude[0] + magnitude[1])


def check_fp8_activation(got: torch.Tensor, want: torch.Tensor) -> None:
    """A GELU cast's FP8 output against torch's GELU on the same tensors, then the cast: the
    same codes but where the two GELUs' fp32 results round to neighbouring bf16
    values (their erf and exp differ in the last fp32 bits), one FP8 step apart at most."""
    apart = fp8_steps_apart(got, want)
    assert apart.max() <= 1
    assert (apart == 0).float().mean() > 0.999


@pytest.mark.parametrize("source", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(4096, 4096), (1000, 777)])
def test_gelu_casts_match_the_unfused_path(source: torch.dtype, shape: tuple[int, int]) -> None:
    """`cast_transpose` with the GELU MLP's activations against torch's GELU (and its
    backward) on the same tensors, then the cast: as `check_fp8_activation`."""
    h = (torch.randn(shape, device=DEVICE) * 2).to(source)
    y, yt = triton_casts.cast_transpose(h, E4M3, activation="gelu")
    assert y is not None and yt is not None
    check_fp8_activation(y, saturating_cast(torch.nn.functional.gelu(h).to(torch.bfloat16), E4M3))
    assert torch.equal(yt.view(torch.uint8), y.t().contiguous().view(torch.uint8))

    h16 = h.to(torch.bfloat16)
    dy = (torch.randn(shape, device=DEVICE) / 1024).to(torch.bfloat16)
    g, gt = triton_casts.cast_transpose(dy, E5M2, 1024.0, activation="gelu_grad", h=h16)
    assert g is not None and gt is not None
    h_ = h16.clone().requires_grad_()
    torch.nn.functional.gelu(h_).backward(dy)
    assert h_.grad is not None
    check_fp8_activation(g, saturating_cast(h_.grad.float() * 1024.0, E5M2))
    assert torch.equal(gt.view(torch.uint8), g.t().contiguous().view(torch.uint8))


MLP = Callable[..., torch.Tensor]  # (x, w_up, w_down, scales, grad_scale) -> y


def fused_mlp(
    x: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    scales: tuple[float, float],
    grad_scale: float,
) -> torch.Tensor:
    return kernels.fp8_gelu_mlp(x, w_up, w_down, scales=scales, grad_scale=grad_scale)


def two_layers(
    x: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    scales: tuple[float, float],
    grad_scale: float,
) -> torch.Tensor:
    h = kernels.fp8_linear(x, w_up, scale=scales[0], grad_scale=grad_scale)
    a = torch.nn.functional.gelu(h)
    return kernels.fp8_linear(a, w_down, scale=scales[1], grad_scale=grad_scale)


def mlp_case(
    mlp: MLP, x0: torch.Tensor, ws: tuple[torch.Tensor, torch.Tensor], g: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Output and gradients of a µS GELU MLP in FP8 on the Triton kernels."""
    d = x0.shape[-1]
    scales, grad_scale = (d**-0.5, (4 * d) ** -0.5), float(x0.numel() // d)
    x = x0.clone().requires_grad_()
    w_up, w_down = (w.clone().requires_grad_() for w in ws)
    y = mlp(x, w_up, w_down, scales, grad_scale)
    y.backward(g)
    assert x.grad is not None and w_up.grad is not None and w_down.grad is not None
    return y, x.grad, w_up.grad, w_down.grad


def mlp_inputs(
    tokens: int, d: int
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    x0 = torch.randn(2, tokens // 2, d, device=DEVICE, dtype=torch.bfloat16)
    ws = (torch.randn(4 * d, d, device=DEVICE), torch.randn(d, 4 * d, device=DEVICE))
    g = torch.randn(2, tokens // 2, d, device=DEVICE, dtype=torch.bfloat16) / tokens
    return x0, ws, g


def test_fp8_gelu_mlp_matches_the_two_layers() -> None:
    """The fused MLP against two `fp8_linear` layers with torch's GELU between: the same
    FP8 operands but where GELU's bf16 rounding differs (check_fp8_activation), and GEMM
    choices that may differ in summation order (the unfused layers may take cuBLAS)."""
    x0, ws, g = mlp_inputs(4096, 1024)
    fused = mlp_case(fused_mlp, x0, ws, g)
    unfused = mlp_case(two_layers, x0, ws, g)
    for got, want in zip(fused, unfused, strict=True):
        assert got.dtype == want.dtype
        assert rel_err(got, want) < 2e-2  # an FP8 step (~6-12%) on ~1.5% of GELU's values
    with torch.no_grad():
        d = x0.shape[-1]
        y_eval = fused_mlp(x0, *ws, (d**-0.5, (4 * d) ** -0.5), 1.0)
    assert torch.equal(y_eval, fused[0])  # evaluation: the same kernels, the same numbers


def test_fp8_gelu_mlp_compiled_matches_eager() -> None:
    x0, ws, g = mlp_inputs(2048, 512)
    eager = mlp_case(fused_mlp, x0, ws, g)
    compiled = mlp_case(torch.compile(fused_mlp, fullgraph=True), x0, ws, g)
    for got, want in zip(compiled, eager, strict=True):
        assert torch.equal(got, want)
