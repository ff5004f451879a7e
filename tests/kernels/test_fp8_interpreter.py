"""Runs `interpreter_checks.py` under Triton's CPU interpreter, in a subprocess.

``TRITON_INTERPRET=1`` must be set before Triton is imported, and this session's other tests
have imported it already without it; a subprocess keeps the setting to these checks.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

CHECKS = Path(__file__).with_name("interpreter_checks.py")
REPO = Path(__file__).resolve().parents[2]


def _interpreter_runs_fp8() -> str | None:
    """None if this Triton's interpreter handles FP8 loads, casts and dots, else why not."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    import triton

    if tuple(int(p) for p in triton.__version__.split(".")[:2]) < (3, 9):
        # Written against triton 3.9's interpreter (CI's). 3.6's (the GPU machine's) ran
        # the cast checks but failed inside the interpreter on the GEMM ones (first seen as
        # "only 0-dimensional arrays can be converted to Python scalars"); there the
        # compiled kernels are tested on the GPU instead.
        return f"needs triton >= 3.9's interpreter, this is {triton.__version__}"
    probe = (
        "import torch, triton, triton.language as tl\n"
        "@triton.jit\n"
        "def k(a_ptr, b_ptr, c_ptr, d_ptr):\n"
        "    o = tl.arange(0, 16)[:, None] * 16 + tl.arange(0, 16)[None, :]\n"
        "    a, b = tl.load(a_ptr + o), tl.load(b_ptr + o)\n"
        "    tl.store(c_ptr + o, tl.dot(b, a))\n"
        "    tl.store(d_ptr + o, (a.to(tl.float32) * 2).to(tl.float8e5))\n"
        "a = torch.eye(16).to(torch.float8_e4m3fn)\n"
        "b = (torch.arange(256.0).reshape(16, 16) - 128).to(torch.float8_e5m2)\n"
        "c, d = torch.empty(16, 16), torch.empty(16, 16, dtype=torch.float8_e5m2)\n"
        "k[(1,)](a, b, c, d)\n"
        "assert torch.equal(c, b.float()) and torch.equal(d.float(), 2 * torch.eye(16))\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        return "this Triton's interpreter cannot run FP8: " + done.stderr.strip()[-300:]
    return None


def run_interpreted(*args: str) -> subprocess.CompletedProcess[str]:
    """``python *args`` from the repository root under Triton's interpreter (the variable set
    before Triton is imported: a subprocess), its output captured."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_triton_kernels_under_the_interpreter() -> None:
    reason = _interpreter_runs_fp8()
    if reason is not None:
        pytest.skip(reason)
    env = {**os.environ, "TRITON_INTERPRET": "1", "SWEEPER_FP8_BACKEND": "auto"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CHECKS)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " skipped" not in done.stdout, done.stdout[-2000:]
