"""The fused AdamW step (`kernels.triton_adam`) on a GPU, against `CompressedAdamW`'s torch path.

Tolerances are `adam_helpers`': weights to fp32 rounding, FP8 scales equal, moment codes
equal but for MAX_FLIPS of them (stochastic rounding thresholds met within fp32 rounding)
and all within one spacing. A captured step replays to the eager step's bits.
"""

from __future__ import annotations

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip(
        "needs a CUDA GPU (the CPU runs this kernel in test_fp8_interpreter.py)",
        allow_module_level=True,
    )

from adam_helpers import compare_fused_steps

from models.compressed_adam import CompressedAdamW, MomentPrecision

# A code flips where the fused and the torch path's fp32 moments (an ulp apart where FMA
# contraction differs) straddle a rounding threshold. On an H200 (torch 2.11, triton 3.6) at
# most 4.1e-6 (fp8) and 6.6e-6 (bf16) of the codes differed in a step; the test prints it.
MAX_FLIPS = 1e-5


@pytest.mark.parametrize("precision", ["fp8", "bf16"])
def test_fused_step_matches_the_torch_path(precision: MomentPrecision) -> None:
    shapes = [(4096, 4096), (1000,), (), (4096, 11008)]
    flips = compare_fused_steps(shapes, precision, "cuda", max_flips=MAX_FLIPS)
    print(f"{precision}: at most {flips:.2e} of the codes differed in a step")


@pytest.mark.parametrize("precision", ["fp8", "bf16"])
def test_a_captured_fused_step_replays_as_eager(precision: MomentPrecision) -> None:
    """Captured with a tensor LR that changes between replays: read on the device, bit-equal
    to eager steps with the same LRs and gradients."""
    torch.manual_seed(0)
    initial = [torch.randn(shape, device="cuda") for shape in [(1024, 1000), (77,), ()]]
    grads = [[torch.randn_like(p) for p in initial] for _ in range(3)]
    lrs = (0.01, 0.005, 0.0025)
    runs = []
    for graphed in (False, True):
        params = [torch.nn.Parameter(p.clone()) for p in initial]
        lr = torch.tensor(lrs[0], device="cuda")
        optimizer = CompressedAdamW(
            params, lr=lr, weight_decay=0.1, precision=precision, fused=True
        )
        for p, g in zip(params, grads[0], strict=True):
            p.grad = g.clone()
        optimizer.step()  # eager: the state and the kernel's compilation, before the capture
        graph = torch.cuda.CUDAGraph() if graphed else None
        if graph is not None:
            with torch.cuda.graph(graph):  # captured on a side stream of its own
                optimizer.step()
        for step in (1, 2):
            for p, g in zip(params, grads[step], strict=True):
                assert p.grad is not None
                p.grad.copy_(g)
            lr.fill_(lrs[step])
            if graph is not None:
                graph.replay()
            else:
                optimizer.step()
        torch.cuda.synchronize()
        runs.append((params, optimizer))
    (eager, eager_opt), (replayed, graph_opt) = runs
    for e, r in zip(eager, replayed, strict=True):
        assert torch.equal(e, r)
        for key, value in eager_opt.state[e].items():
            assert torch.equal(graph_opt.state[r][key], value), key
