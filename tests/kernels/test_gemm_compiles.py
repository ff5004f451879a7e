"""The persistent TMA GEMM compiles for Hopper (sm_90) with every candidate tile and every
epilogue, on the CPU: Triton compiles to PTX and runs its bundled ptxas without a GPU.

The interpreter (`interpreter_checks.py`) runs the kernel's logic but not Triton's compiler,
which rejects some code the interpreter accepts: a shape from a name assigned inside the
persistent tile loop (a loop value, a tensor, to the compiler) failed every config with a
4-way epilogue split on the GPU, and fails here too.
"""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels import triton_gemm

# Triton's names of the operand and output types, per epilogue: (A, C, D) where D, Dt are
# the epilogue's FP8 outputs (C's type stands in without one, as the launch passes C).
TYPES = {
    "none": ("fp8e5", "fp32", None),  # the weight gradient
    "gelu": ("fp8e4nv", "bf16", "fp8e4nv"),
    "gelu_grad": ("fp8e5", "bf16", "fp8e5"),
}


def signature(config: triton.Config, epilogue: str) -> dict[str, str]:
    kw = config.kwargs
    bm, bn, bk = kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"]
    slice_n = bn // kw["EPILOGUE_SPLIT"]
    a, c, d = TYPES[epilogue]
    d_box, dt_box = (
        (f"{d}[{bm}, {slice_n}]", f"{d}[{slice_n}, {bm}]")
        if d is not None
        else ((f"{c}[{bm}, {slice_n}]",) * 2)
    )
    descs = {
        "a_desc": f"{a}[{bm}, {bk}]",
        "b_desc": f"fp8e4nv[{bn}, {bk}]",
        "c_desc": f"{c}[{bm}, {slice_n}]",
        "d_desc": d_box,
        "dt_desc": dt_box,
    }
    scalars = {"M": "i32", "N": "i32", "K": "i32", "scale": "fp32", "cast_scale": "fp32"}
    return {name: f"tensordesc<{box}>" for name, box in descs.items()} | scalars


# Each candidate tile once, the three epilogues taking turns: every tile and every
# epilogue compiled, ~3 s a compilation.
CASES = [
    (config, triton_gemm.EPILOGUES[i % len(triton_gemm.EPILOGUES)])
    for i, config in enumerate(triton_gemm.FP8_MATMUL_TMA.configs)
]


def case_id(case: tuple[triton.Config, str]) -> str:
    config, epilogue = case
    kw = config.kwargs
    tile = f"{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']}"
    return f"{tile}-split{kw['EPILOGUE_SPLIT']}-stages{config.num_stages}-{epilogue}"


@pytest.mark.parametrize(("config", "epilogue"), CASES, ids=[case_id(c) for c in CASES])
def test_tma_gemm_compiles_for_hopper(config: triton.Config, epilogue: str) -> None:
    fp8_max = 448.0 if TYPES[epilogue][2] == "fp8e4nv" else 57344.0
    constexprs = {
        **config.kwargs,
        "EPILOGUE": epilogue,
        "FP8_MAX": fp8_max,
        "PRECISE_ACC": False,
        "NUM_SMS": 132,
        "WARP_SPECIALIZE": False,
    }
    sig = signature(config, epilogue) | {name: "constexpr" for name in constexprs}
    source = ASTSource(
        fn=triton_gemm._fp8_matmul_tma_persistent_kernel, signature=sig, constexprs=constexprs
    )
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    assert kernel.metadata.shared <= 232448  # an H100's shared memory per block (227 KiB)
