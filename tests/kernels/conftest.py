"""Fixtures of the kernel tests (the GPU files and the interpreter checks alike)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(params=["epilogue", "cast"])
def gelu_fusion(request: pytest.FixtureRequest) -> Iterator[str]:
    """`kernels.ops.GELU_FUSION`, each way, restored after the test."""
    from kernels import ops

    before = ops.GELU_FUSION
    ops.GELU_FUSION = request.param
    try:
        yield request.param
    finally:
        ops.GELU_FUSION = before
