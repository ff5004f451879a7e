"""The FP8 layers' weight work on a side stream, beside the activations' chain.

At proxy widths every kernel of a step is small, and a CUDA graph, which removes the
launch gaps, still runs them one after another: a width-256 weight-gradient GEMM fills 16
of the H200's 132 SMs, a weight's e4m3 cast a few more, and the rest wait. Two pieces of
an FP8 layer's work depend on nothing in the activations' chain: the weight's e4m3 copies
need only the weight, and the weight's gradient is read only by the optimizer. Inside
`overlapping`, `kernels.ops` runs both on a side stream of the device, forked from the
current stream where their inputs are ready: each weight's cast is joined before its GEMM,
and the weight gradients when the block ends. A CUDA graph captured inside keeps the
concurrency (fork and join become edges of the graph). The numbers are unchanged: the
same kernels on the same inputs, only at other times.

What the block needs of its caller, because autograd cannot see the side stream: the
weights' gradients unset when backward runs (autograd then stores each weight gradient as
it is, with no kernel of its own on the current stream), no hooks on them (DDP's), and
the optimizer stepped only after the block. `models.steps.GraphedSteps`, the one caller,
is all of that (one process, ``zero_grad(set_to_none=True)``); a layer whose weight
already holds a gradient computes it on the current stream.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch

_enabled = False
_pending: set[torch.cuda.Stream] = set()  # side streams whose work the block's end joins


@functools.cache
def _stream(device_index: int) -> torch.cuda.Stream:
    return torch.cuda.Stream(device_index)


@contextlib.contextmanager
def overlapping() -> Iterator[None]:
    """Weight casts and weight gradients beside the activations' chain inside the block;
    on exit the current stream waits for all of them."""
    global _enabled
    previous = _enabled
    _enabled = True
    try:
        yield
    finally:
        _enabled = previous
        if _pending:
            current = torch.cuda.current_stream()
            while _pending:
                current.wait_stream(_pending.pop())


def side_stream(device: torch.device) -> torch.cuda.Stream | None:
    """The side stream for weight work on ``device`` inside `overlapping`, else None.

    None under torch.compile too: its traced graph has no place for stream switches.
    """
    if not _enabled or device.type != "cuda" or torch.compiler.is_compiling():
        return None
    return _stream(device.index if device.index is not None else torch.cuda.current_device())


@contextlib.contextmanager
def beside(side: torch.cuda.Stream | None, *inputs: torch.Tensor) -> Iterator[None]:
    """The block on ``side`` once the current stream's work so far is done (``side`` None:
    on the current stream). ``inputs``, made on the current stream and freed by it, stay
    allocated until ``side`` has read them."""
    if side is None:
        yield
        return
    side.wait_stream(torch.cuda.current_stream())
    for t in inputs:
        t.record_stream(side)
    with torch.cuda.stream(side):
        yield


def join(side: torch.cuda.Stream | None, *outputs: torch.Tensor) -> None:
    """The current stream waits for ``side``; ``outputs``, made there, are now its."""
    if side is None:
        return
    current = torch.cuda.current_stream()
    current.wait_stream(side)
    for t in outputs:
        t.record_stream(current)


def join_later(side: torch.cuda.Stream | None, *outputs: torch.Tensor) -> None:
    """As `join`, with the wait at the end of the `overlapping` block."""
    if side is None:
        return
    for t in outputs:
        t.record_stream(torch.cuda.current_stream())
    _pending.add(side)
