"""Which form of the fused Res-Post-LN kernel's two FP8 stores is right on this GPU, at what cost.

The first GPU run of `kernels.triton_norm` (H100, torch 2.11, triton 3.6) found its transposed
e4m3 copy y8t wrong in ~25% of the elements whenever the same program also stored the
row-major copy y8 from the same registers, and right whenever it stored y8t alone: with
`tl.trans` of the codes, of the fp32 y, or with no `tl.trans` at all (the codes stored at
transposed addresses) (`results/norm_store_probe_h100_first.json`). This probe's run on the
same machine (`results/norm_store_probe_h100.json`) found the form the kernel now has right
at every shape at the same speed, and every form that stores y8t from the registers wrong.

The probe builds variants of the kernel from its own source, each replacing the block of
pass 3 that writes the copies, and reports for each: the elements of y8 that differ from the
project's cast kernel applied to the kernel's y (`kernels.triton_casts.saturating_cast`: bit
for bit torch's on a GPU, the interpreter's own rounding on a CPU), the elements of y8t that
differ from y8ᵀ, for an fp32 and a bf16 x, and the forward's time at the benchmark's shape:

* ``current``: the kernel as it is: y8 stored, a CTA barrier, y8's tile loaded back (from
  L2) and stored transposed;
* ``from_registers``: y8 stored, then the same codes, still in registers, stored transposed
  (the kernel's first form; wrong on triton 3.6 for an fp32 x);
* ``transposed_first``: the same with y8t stored before y8;
* ``barrier_between``: the same with a CTA barrier between the two stores;
* ``fourth_pass``: pass 3 stores y and y8 only; after a barrier a fourth loop over the row
  block loads y8's tiles back and stores them transposed;
* ``two_launches``: the kernel twice, rows only then columns only (y computed twice): the
  bound any one-kernel form must beat.

    python -m benchmarks.norm_store_probe                              # CUDA
    TRITON_INTERPRET=1 python -m benchmarks.norm_store_probe --tiny    # CPU, the test's run
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from benchmarks.common import bench_ms, environment, write_json

SKIP, BRANCH = math.sqrt(0.7), math.sqrt(0.3)
SOURCE = Path(__file__).resolve().parents[1] / "kernels" / "triton_norm.py"
# The block of pass 3 that writes the copies: from the row-major store to the end of the
# transposed one (the kernel's last statement).
STORES_START = "            tl.store(y8_ptr + offs, codes, mask=mask)\n"
STORES_END = "mask=mask_t\n                )\n"

# Statements of pass 3's loop body (12 spaces: inside ``if CAST:``; the probe asks for both).
ROWS = STORES_START
COLS = (
    "            mask_t = in_c[:, None] & in_m[None, :]\n"
    "            tl.store(y8t_ptr + offs_c[:, None] * M + offs_m[None, :], tl.trans(codes),"
    " mask=mask_t)\n"
)
BARRIER = "            tl.debug_barrier()\n"
FOURTH_PASS = """
    # Pass 4 (probe): y8's tiles back from memory, stored transposed.
    if TRANSPOSE:
        tl.debug_barrier()
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + cols
            in_c = offs_c < C
            mask = in_m[:, None] & in_c[None, :]
            back = tl.load(y8_ptr + rows + offs_c[None, :], mask=mask, other=0)
            mask_t = in_c[:, None] & in_m[None, :]
            tl.store(y8t_ptr + offs_c[:, None] * M + offs_m[None, :], tl.trans(back), mask=mask_t)
"""
STORES = {  # variant -> (the stores' block in pass 3, what follows pass 3)
    "from_registers": (ROWS + COLS, ""),
    "transposed_first": (COLS + ROWS, ""),
    "barrier_between": (ROWS + BARRIER + COLS, ""),
    "fourth_pass": (ROWS, FOURTH_PASS),
}
VARIANTS = ["current", *STORES, "two_launches"]
SHAPES = [(4096, 1024), (16384, 4096)]
TIMED_SHAPE = (16384, 4096)
TINY_SHAPES = [(37, 80)]


def variant_source(name: str) -> str:
    """triton_norm's source with the copies' stores of variant ``name``."""
    source = SOURCE.read_text()
    start = source.index(STORES_START)
    end = source.index(STORES_END, start) + len(STORES_END)
    stores, after = STORES[name]
    return source[:start] + stores + after + source[end:]


def load_variant(name: str, directory: Path) -> ModuleType:
    """The variant as a module of its own (Triton compiles a kernel from its source file)."""
    path = directory / f"triton_norm_{name}.py"
    path.write_text(variant_source(name))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


Forward = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def forward_of(name: str, directory: Path) -> Forward:
    """``(y, y8, y8t)`` of variant ``name`` for ``(x, f, gain)``."""
    from kernels import triton_norm

    if name == "two_launches":

        def twice(
            x: torch.Tensor, f: torch.Tensor, gain: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            y, y8, _, _, _ = triton_norm.res_post_norm(
                x, f, gain, skip=SKIP, branch=BRANCH, cols=False
            )
            _, _, y8t, _, _ = triton_norm.res_post_norm(
                x, f, gain, skip=SKIP, branch=BRANCH, rows=False
            )
            assert y8 is not None and y8t is not None
            return y, y8, y8t

        return twice
    module = triton_norm if name == "current" else load_variant(name, directory)

    def once(
        x: torch.Tensor, f: torch.Tensor, gain: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y, y8, y8t, _, _ = module.res_post_norm(x, f, gain, skip=SKIP, branch=BRANCH)
        assert y8 is not None and y8t is not None
        return y, y8, y8t

    return once


def check(forward: Forward, m: int, c: int, x_dtype: torch.dtype, device: str) -> dict[str, int]:
    """Elements of y8 unlike the cast kernel's cast of y, and of y8t unlike y8ᵀ."""
    from kernels import E4M3, triton_casts

    torch.manual_seed(0)
    x = torch.randn(m, c, device=device).to(x_dtype)
    f = (torch.randn(m, c, device=device) * 3 + 1.5).to(torch.bfloat16)
    gain = 1 + 0.2 * torch.randn(c, device=device)
    y, y8, y8t = forward(x, f, gain)
    cast = triton_casts.saturating_cast(y, E4M3, 1.0).view(torch.uint8)
    codes = y8.view(torch.uint8)
    return {
        "wrong_y8": int((codes != cast).sum()),
        "wrong_y8t": int((y8t.view(torch.uint8) != codes.t()).sum()),
    }


def probe(name: str, directory: Path, *, device: str, tiny: bool) -> dict[str, Any]:
    forward = forward_of(name, directory)
    row: dict[str, Any] = {"variant": name, "checks": []}
    for m, c in TINY_SHAPES if tiny else SHAPES:
        for x_dtype in (torch.float32, torch.bfloat16):
            counts = check(forward, m, c, x_dtype, device)
            row["checks"].append(
                {"M": m, "C": c, "x": str(x_dtype).removeprefix("torch."), **counts}
            )
    if device == "cuda":
        m, c = TIMED_SHAPE
        x = torch.randn(m, c, device=device)
        f = torch.randn(m, c, device=device).to(torch.bfloat16)
        gain = torch.ones(c, device=device)
        row["forward_ms"] = round(bench_ms(lambda: forward(x, f, gain)), 4)
        row["timed"] = {"M": m, "C": c, "x": "float32"}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help=f"CPU, the interpreter: {TINY_SHAPES}")
    parser.add_argument("--out", default="norm_store_probe", help="benchmarks/results/<out>.json")
    args = parser.parse_args()
    device = "cpu" if args.tiny else "cuda"
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for name in VARIANTS:
            row = probe(name, Path(directory), device=device, tiny=args.tiny)
            print(json.dumps(row), flush=True)
            rows.append(row)
    if not args.tiny:
        write_json(args.out, {"environment": environment(), "variants": rows})


if __name__ == "__main__":
    main()
