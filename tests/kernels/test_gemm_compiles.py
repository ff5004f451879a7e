"""The persistent TMA GEMM compiles for Hopper (sm_90) with every candidate tile, on the CPU:
Triton compiles to PTX and runs its bundled ptxas without a GPU.

The interpreter (`interpreter_checks.py`) runs the kernel's logic but not Triton's compiler,
which rejects some code the interpreter accepts: a shape from a name assigned inside the
persistent tile loop (a loop value, a tensor, to the compiler) once failed every config with
a 4-way epilogue split on the GPU; such code fails here too.
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

# Triton's names of (A, C) for the three GEMMs of a layer; B is e4m3 in each.
GEMMS = {
    "forward": ("fp8e4nv", "bf16"),
    "dgrad": ("fp8e5", "bf16"),
    "wgrad": ("fp8e5", "fp32"),
}


def signature(config: triton.Config, gemm: str) -> dict[str, str]:
    kw = config.kwargs
    bm, bn, bk = kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"]
    a, c = GEMMS[gemm]
    descs = {
        "a_desc": f"{a}[{bm}, {bk}]",
        "b_desc": f"fp8e4nv[{bn}, {bk}]",
        "c_desc": f"{c}[{bm}, {bn // kw['EPILOGUE_SPLIT']}]",
    }
    scalars = {"M": "i32", "N": "i32", "K": "i32", "scale": "fp32"}
    return {name: f"tensordesc<{box}>" for name, box in descs.items()} | scalars


# Each candidate tile once, the three GEMMs' operand types taking turns: ~3 s a compilation.
CASES = [
    (config, list(GEMMS)[i % len(GEMMS)])
    for i, config in enumerate(triton_gemm.FP8_MATMUL_TMA.configs)
]


def case_id(case: tuple[triton.Config, str]) -> str:
    config, gemm = case
    kw = config.kwargs
    tile = f"{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']}"
    return f"{tile}-split{kw['EPILOGUE_SPLIT']}-stages{config.num_stages}-{gemm}"


@pytest.mark.parametrize(("config", "gemm"), CASES, ids=[case_id(c) for c in CASES])
def test_tma_gemm_compiles_for_hopper(config: triton.Config, gemm: str) -> None:
    constexprs = {
        **config.kwargs,
        "PRECISE_ACC": False,
        "NUM_SMS": 132,
        "WARP_SPECIALIZE": False,
    }
    sig = signature(config, gemm) | {name: "constexpr" for name in constexprs}
    source = ASTSource(
        fn=triton_gemm._fp8_matmul_tma_persistent_kernel, signature=sig, constexprs=constexprs
    )
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    assert kernel.metadata.shared <= 232448  # an H100's shared memory per block (227 KiB)
