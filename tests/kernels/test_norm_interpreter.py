"""Runs `norm_interpreter_checks.py` (`kernels.triton_norm`) under Triton's CPU interpreter,
in a subprocess, as `test_fp8_interpreter.py` runs the FP8 kernels' checks (and for the same
reason: ``TRITON_INTERPRET=1`` must be set before Triton is first imported)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_fp8_interpreter import REPO, _interpreter_runs_fp8

CHECKS = Path(__file__).with_name("norm_interpreter_checks.py")


def test_norm_kernels_under_the_interpreter() -> None:
    reason = _interpreter_runs_fp8()
    if reason is not None:
        pytest.skip(reason)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
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
