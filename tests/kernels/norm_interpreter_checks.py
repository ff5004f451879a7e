"""`kernels.triton_norm` on CPU, under Triton's interpreter (``TRITON_INTERPRET=1``).

Not collected by pytest's default pattern: `test_norm_interpreter.py` runs this file in a
subprocess with the variable set (it must be set before Triton is first imported).

The interpreter's own errors (see `interpreter_checks.py`), and how these checks stay exact:
* fp32 -> e4m3 rounds ties away from zero and mis-rounds when the rounding carries into the
  next binade (1.94 becomes 1.0, not 2.0). The FP8 copies are checked two ways, both bit
  for bit: on inputs built so that y lands on e4m3 values (eps = 0, rows of f that
  normalise to exactly ±1, integer x and gain, saturating extremes), against torch's
  ``saturating_cast``; and on random inputs against the interpreter's own cast of the y the
  kernel returned (`kernels.triton_casts.saturating_cast`), which checks that the copies are
  the cast of the stored y, whatever the interpreter's rounding. Against torch's rounding on
  random inputs they are compared bit for bit on the GPU (`test_norm_triton_gpu.py`).
* fp32 -> bf16 truncates: a bf16 y or gradient is checked within one bf16 unit (2^-7
  relative) of the fp32 or float64 result, and bf16 gradients within 2^-7 relative Frobenius
  error of the reference's (torch rounds to nearest: the two are up to a unit apart, where
  the GPU tests hold them to 2^-8). The backward kernel's fp32 math is checked tightly
  (1e-5) on an fp32 f, whose df is fp32.
* NaN becomes a number in the FP8 cast: NaN propagation is checked on the GPU.
The interpreter's tile is BLOCK_M = 16, BLOCK_C = 32 (`norm_config`): the shapes below cross
row-block and chunk boundaries (M, C not multiples) and include a row narrower than a chunk;
the backward's (`norm_backward_config`) walks 3 blocks of 1 or 2 rows a program: they cross
program boundaries and end in a partial program.
"""

from __future__ import annotations

import functools
import math
import os
import re

import pytest
import torch
from fp8_helpers import norm_after_op_runs
from torch._dynamo.testing import AotEagerAndRecordGraphs

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run by test_norm_interpreter.py with TRITON_INTERPRET=1", allow_module_level=True)

from kernels import E4M3, E5M2, saturating_cast, triton_casts, using_fp8_backend
from kernels.triton_norm import (
    MAX_WIDTH,
    norm_config,
    res_post_norm,
    res_post_norm_backward,
    res_post_norm_backward_op,
    res_post_norm_fp8,
    res_post_norm_op,
    res_post_norm_reference,
)

SKIP, BRANCH = math.sqrt(1 - 0.3), math.sqrt(0.3)
SHAPES = [(37, 80), (5, 20)]  # partial row block and chunk; C smaller than a chunk
BF16_UNIT = 2.0**-7  # the interpreter's truncation to bf16: within one unit, not half


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def inputs(m: int, c: int, x_dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """A residual stream near unit variance, a sub-layer output off zero mean, a gain near 1."""
    x = torch.randn(m, c).to(x_dtype)
    f = (torch.randn(m, c) * 3 + 1.5).to(torch.bfloat16)
    gain = 1 + 0.2 * torch.randn(c)
    return x, f, gain


def test_the_interpreter_tile_is_the_one_these_shapes_are_chosen_for() -> None:
    assert norm_config(80) == {"BLOCK_M": 16, "BLOCK_C": 32, "num_warps": 1}


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_y_and_statistics_match_the_reference(x_dtype: torch.dtype, shape: tuple[int, int]) -> None:
    x, f, gain = inputs(*shape, x_dtype)
    y, y8, y8t, mean, rstd = res_post_norm(x, f, gain, skip=SKIP, branch=BRANCH)
    assert y.dtype == x_dtype and y.shape == x.shape
    assert mean.shape == rstd.shape == (shape[0],) and mean.dtype == torch.float32
    # the reference's y before its rounding to x's dtype
    y32, _, _ = res_post_norm_reference(x.float(), f, gain, skip=SKIP, branch=BRANCH)
    if x_dtype == torch.float32:
        torch.testing.assert_close(y, y32, rtol=1e-5, atol=1e-6)
    else:  # the interpreter truncates to bf16: within one bf16 unit
        torch.testing.assert_close(y.float(), y32, rtol=2.0**-7, atol=1e-6)
    _, mean_ref, rstd_ref = torch.ops.aten.native_layer_norm(
        f.float(), [shape[1]], None, None, 1e-5
    )
    torch.testing.assert_close(mean, mean_ref.view(-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rstd, rstd_ref.view(-1), rtol=1e-5, atol=0.0)
    # The copies are the cast of the stored y (the interpreter's cast: see the docstring).
    assert y8 is not None and y8t is not None
    assert y8.dtype == y8t.dtype == E4M3 and y8t.shape == (shape[1], shape[0])
    assert torch.equal(bits(y8), bits(triton_casts.saturating_cast(y, E4M3)))
    assert torch.equal(bits(y8t), bits(y8).t())


def on_the_e4m3_grid(m: int, c: int, x_dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Inputs whose y is exact in e4m3 (with eps = 0, skip = branch = 1/2), and that y.

    Each row of f is ``b ± 2`` with as many + as -: mean b and rstd 1/2 exactly, so
    LayerNorm(f) = ±1 and y = (x ± gain) / 2, halves of integers in [-16, 16], all e4m3
    values; four x far past 448 (their y saturates, whatever its rounding to x's dtype).
    """
    assert c % 2 == 0
    signs = torch.tensor([1.0, -1.0]).repeat(m, c // 2)
    signs = torch.gather(signs, 1, torch.argsort(torch.rand(m, c), dim=1))
    b = torch.randint(-3, 4, (m, 1)).float()
    f = (b + 2 * signs).to(torch.bfloat16)
    x = torch.randint(-8, 9, (m, c)).float()
    gain = torch.randint(-8, 9, (c,)).float()
    x.view(-1)[:4] = torch.tensor([1e4, -1e4, 1e6, -1e6])
    x = x.to(x_dtype)
    return x, f, gain, (x.float() + gain * signs) / 2


# eps = 0: the last row block's rows past M (all zeros, masked out of every store) have rstd
# 1/0, and numpy says so.
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_fp8_copies_are_torchs_cast_where_the_interpreter_is_exact(
    x_dtype: torch.dtype, shape: tuple[int, int]
) -> None:
    x, f, gain, y_exact = on_the_e4m3_grid(*shape, x_dtype)
    y, y8, y8t, _, rstd = res_post_norm(x, f, gain, skip=0.5, branch=0.5, eps=0.0)
    assert torch.equal(rstd, torch.full_like(rstd, 0.5))
    small = y_exact.abs() <= 16  # all but the four saturating ones: exact in x's dtype
    assert torch.equal(y.float()[small], y_exact[small]) and (~small).sum() == 4
    ref = saturating_cast(y_exact, E4M3)
    assert ref.float().abs().max() == 448.0  # the saturating elements are there
    assert y8 is not None and y8t is not None
    assert torch.equal(bits(y8), bits(ref))
    assert torch.equal(bits(y8t), bits(ref).t())
    assert torch.equal(y8.float().view(-1)[:4], torch.tensor([448.0, -448.0, 448.0, -448.0]))


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_rows_and_cols_choose_the_copies(x_dtype: torch.dtype) -> None:
    x, f, gain = inputs(37, 80, x_dtype)
    y, y8, y8t, mean, rstd = res_post_norm(x, f, gain, skip=SKIP, branch=BRANCH)
    assert y8 is not None and y8t is not None
    for rows, cols in [(True, False), (False, True), (False, False)]:
        out = res_post_norm(x, f, gain, skip=SKIP, branch=BRANCH, rows=rows, cols=cols)
        assert torch.equal(out[0], y) and torch.equal(out[3], mean) and torch.equal(out[4], rstd)
        assert (out[1] is None) != rows and (out[2] is None) != cols
        if out[1] is not None:
            assert torch.equal(bits(out[1]), bits(y8))
        if out[2] is not None:
            assert torch.equal(bits(out[2]), bits(y8t))


def test_arguments_are_checked() -> None:
    x, f, gain = inputs(8, 16, torch.float32)
    with pytest.raises(ValueError, match="gain"):
        res_post_norm(x, f, gain[:8], skip=SKIP, branch=BRANCH)
    with pytest.raises(ValueError, match="contiguous"):
        res_post_norm(x.t(), f.t(), torch.ones(8), skip=SKIP, branch=BRANCH)
    empty = res_post_norm(x[:0], f[:0], gain, skip=SKIP, branch=BRANCH)
    assert empty[0].shape == (0, 16) and empty[2] is not None and empty[2].shape == (16, 0)


def grads(
    fn: object, x0: torch.Tensor, f0: torch.Tensor, g0: torch.Tensor, dy: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    x, f, g = (t.clone().requires_grad_() for t in (x0, f0, g0))
    y, y8, y8t = fn(x, f, g, skip=SKIP, branch=BRANCH, eps=1e-5)  # type: ignore[operator]
    assert not y8.requires_grad and not y8t.requires_grad
    y.backward(dy)
    assert x.grad is not None and f.grad is not None and g.grad is not None
    return y.detach(), x.grad, f.grad, g.grad


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_gradients_match_autograd_through_the_reference(
    x_dtype: torch.dtype, shape: tuple[int, int]
) -> None:
    x, f, gain = inputs(*shape, x_dtype)
    dy = torch.randn(*shape).to(x_dtype)
    _, dx, df, dgain = grads(res_post_norm_fp8, x, f, gain, dy)
    _, dx_ref, df_ref, dgain_ref = grads(res_post_norm_reference, x, f, gain, dy)
    assert (dx.dtype, df.dtype, dgain.dtype) == (x_dtype, torch.bfloat16, torch.float32)
    # fp32 results: rtol 1e-4; bf16 ones (df always, dx for a bf16 x): the interpreter's
    # truncation against torch's rounding, one bf16 unit.
    assert rel(dgain, dgain_ref) < 1e-4
    assert rel(dx, dx_ref) < (1e-4 if x_dtype == torch.float32 else BF16_UNIT)
    assert rel(df, df_ref) < BF16_UNIT
    if x_dtype == torch.float32:  # dx is skip * dy, nothing of the norm in it
        assert torch.equal(dx, dy * SKIP)


def test_gradients_of_a_subset_of_the_inputs() -> None:
    x0, f0, gain = inputs(37, 80, torch.float32)
    dy = torch.randn(37, 80)
    x, f = x0.clone().requires_grad_(), f0.clone().requires_grad_()
    y, _, _ = res_post_norm_fp8(x, f, gain, skip=SKIP, branch=BRANCH)
    y.backward(dy)
    x_ref, f_ref = x0.clone().requires_grad_(), f0.clone().requires_grad_()
    y_ref, _, _ = res_post_norm_reference(x_ref, f_ref, gain, skip=SKIP, branch=BRANCH)
    y_ref.backward(dy)
    assert x.grad is not None and f.grad is not None and f_ref.grad is not None
    assert torch.equal(x.grad, dy * SKIP)
    assert rel(f.grad, f_ref.grad) < BF16_UNIT
    f2 = f0.clone().requires_grad_()  # x and gain frozen: df only
    y2, _, _ = res_post_norm_fp8(x0, f2, gain, skip=SKIP, branch=BRANCH)
    y2.backward(dy)
    assert f2.grad is not None and torch.equal(f2.grad, f.grad)


def test_without_grad_the_kernel_alone() -> None:
    x, f, gain = inputs(37, 80, torch.float32)
    y, y8, y8t, _, _ = res_post_norm(x, f, gain, skip=SKIP, branch=BRANCH)
    assert y8 is not None and y8t is not None
    with torch.no_grad():
        out = res_post_norm_fp8(x.requires_grad_(), f, gain, skip=SKIP, branch=BRANCH)
    assert not out[0].requires_grad
    assert torch.equal(out[0], y) and torch.equal(bits(out[1]), bits(y8))
    assert torch.equal(bits(out[2]), bits(y8t))


@pytest.mark.filterwarnings("ignore:Your compiler for AOTAutograd:UserWarning")  # the recorder
@pytest.mark.parametrize("needs", [(True, True, True), (False, True, False)])
def test_compiles_through_the_custom_ops(needs: tuple[bool, bool, bool]) -> None:
    """dynamo traces the Function around both custom ops (their fakes) without a graph
    break, the backward's only for the inputs that need a gradient; aot_eager then runs them
    as eager would, backward included (y.sum(): an expanded dy)."""
    x0, f0, g0 = inputs(37, 80, torch.float32)

    def sub_layer_end(
        x: torch.Tensor, f: torch.Tensor, g: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        y, y8, y8t = res_post_norm_fp8(x, f * 2, g, skip=SKIP, branch=BRANCH)
        return y * 3, y8, y8t

    backend = AotEagerAndRecordGraphs()
    results = []
    for fn in (sub_layer_end, torch.compile(sub_layer_end, backend=backend, fullgraph=True)):
        leaves = [
            t.clone().requires_grad_(need) for t, need in zip((x0, f0, g0), needs, strict=True)
        ]
        y, y8, y8t = fn(*leaves)
        y.sum().backward()
        results.append((y, bits(y8), bits(y8t), *(t.grad for t in leaves)))
    for eager, compiled in zip(*results, strict=True):
        assert (compiled is None) == (eager is None)
        assert compiled is None or torch.equal(compiled, eager)
    ((forward,), (backward,)) = backend.fw_graphs, backend.bw_graphs
    assert "sweeper.res_post_norm.default" in forward.code
    assert "sweeper.res_post_norm_backward.default" in backward.code


def test_custom_op_passes_opcheck() -> None:
    x, f, gain = inputs(37, 80, torch.float32)
    torch.library.opcheck(
        res_post_norm_op,
        (x, f, gain, SKIP, BRANCH, 1e-5),
        test_utils=(
            "test_schema",
            "test_faketensor",
            "test_autograd_registration",
            "test_aot_dispatch_dynamic",
        ),
    )


# ---------------------------------------------------------------------------------------------
# The backward kernel on its own
# ---------------------------------------------------------------------------------------------


def backward_in_float64(
    dy: torch.Tensor, f: torch.Tensor, gain: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, df, dgain)`` from the formulas, in float64, from the forward's mean and rstd."""
    dy, f, gain = dy.double(), f.double(), gain.double()
    n = (f - mean.double()[:, None]) * rstd.double()[:, None]
    g = BRANCH * dy * gain
    mean_g, mean_gn = g.mean(1, keepdim=True), (g * n).mean(1, keepdim=True)
    df = rstd.double()[:, None] * (g - mean_g - n * mean_gn)
    return SKIP * dy, df, (BRANCH * dy * n).sum(0)


def check_against_float64(got: torch.Tensor, want: torch.Tensor) -> None:
    """fp32: 1e-5 relative Frobenius error; bf16: each element within one (truncated) unit."""
    if got.dtype == torch.float32:
        assert rel(got, want) < 1e-5
    else:
        torch.testing.assert_close(got.double(), want, rtol=BF16_UNIT, atol=1e-5)


@pytest.mark.parametrize("f_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_kernel_matches_the_formulas_in_float64(
    shape: tuple[int, int], x_dtype: torch.dtype, f_dtype: torch.dtype
) -> None:
    x, f, gain = inputs(*shape, x_dtype)
    f = f.to(f_dtype) if f_dtype == torch.bfloat16 else (torch.randn(*shape) * 3 + 1.5)
    dy = torch.randn(*shape).to(x_dtype)
    _, _, _, mean, rstd = res_post_norm(x, f, gain, skip=SKIP, branch=BRANCH)
    dx, df, df8t, dgain = res_post_norm_backward(
        dy, f, gain, mean, rstd, skip=SKIP, branch=BRANCH, x_dtype=x_dtype
    )
    assert dx is not None and df is not None and dgain is not None and df8t is None
    assert (dx.dtype, df.dtype, dgain.dtype) == (x_dtype, f_dtype, torch.float32)
    assert dx.shape == df.shape == shape and dgain.shape == (shape[1],)
    for got, want in zip(
        (dx, df, dgain), backward_in_float64(dy, f, gain, mean, rstd), strict=True
    ):
        check_against_float64(got, want)


NEEDS = [(True, False, False), (False, True, False), (False, False, True), (True, False, True)]


@pytest.mark.parametrize("needs", NEEDS)
def test_backward_writes_only_the_gradients_asked_for(needs: tuple[bool, bool, bool]) -> None:
    x, f, gain = inputs(37, 80, torch.bfloat16)
    dy = torch.randn(37, 80).to(torch.bfloat16)
    _, _, _, mean, rstd = res_post_norm(x, f, gain, skip=SKIP, branch=BRANCH)
    args = (dy, f, gain, mean, rstd)
    every = res_post_norm_backward(*args, skip=SKIP, branch=BRANCH, x_dtype=x.dtype)
    need_x, need_f, need_gain = needs
    some = res_post_norm_backward(
        *args,
        skip=SKIP,
        branch=BRANCH,
        x_dtype=x.dtype,
        need_x=need_x,
        need_f=need_f,
        need_gain=need_gain,
    )
    wanted = (every.dx, every.df, every.dgain)
    for need, got, want in zip(needs, (some.dx, some.df, some.dgain), wanted, strict=True):
        assert (got is not None) == need
        assert got is None or (want is not None and torch.equal(got, want))


@pytest.mark.parametrize("f_cols", [True, False])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_casts_df_as_the_layer_before_would(
    shape: tuple[int, int], x_dtype: torch.dtype, f_cols: bool
) -> None:
    """With a grad_scale, df comes as the FP8 layer that made f casts its output gradient
    (`triton_casts.cast_transpose` of the stored df after the scale): the same bits, rows
    and transposed, across the transposed copy's tiles and the programs' row runs; dx and
    dgain as without it. Some values saturate."""
    x, f, gain = inputs(*shape, x_dtype)
    dy = torch.randn(*shape).to(x_dtype)
    _, _, _, mean, rstd = res_post_norm(x, f, gain, skip=SKIP, branch=BRANCH)
    args, kwargs = (dy, f, gain, mean, rstd), {"skip": SKIP, "branch": BRANCH, "x_dtype": x_dtype}
    plain = res_post_norm_backward(*args, **kwargs)
    assert plain.df is not None
    grad_scale = float(2**18)  # |df| * 2^18 passes e5m2's 57344 for some elements
    fused = res_post_norm_backward(*args, **kwargs, grad_scale=grad_scale, f_cols=f_cols)
    rows, cols = triton_casts.cast_transpose(plain.df, E5M2, grad_scale)
    assert rows is not None and cols is not None and fused.df is not None
    assert bool((rows.float().abs() == torch.finfo(E5M2).max).any())  # saturated
    assert fused.df.dtype == E5M2 and torch.equal(bits(fused.df), bits(rows))
    if f_cols:
        assert fused.df8t is not None and torch.equal(bits(fused.df8t), bits(cols))
    else:
        assert fused.df8t is None
    assert plain.dx is not None and fused.dx is not None and torch.equal(fused.dx, plain.dx)
    assert plain.dgain is not None and fused.dgain is not None
    assert torch.equal(fused.dgain, plain.dgain)


def test_backward_arguments_are_checked() -> None:
    x, f, gain = inputs(8, 16, torch.float32)
    _, _, _, mean, rstd = res_post_norm(x, f, gain, skip=SKIP, branch=BRANCH)
    backward = functools.partial(
        res_post_norm_backward, skip=SKIP, branch=BRANCH, x_dtype=torch.float32
    )
    with pytest.raises(ValueError, match="rstd"):
        backward(x, f, gain, mean, rstd[:4])
    with pytest.raises(ValueError, match="contiguous"):
        backward(torch.randn(16, 8).t(), f, gain, mean, rstd)
    wide = torch.zeros(1, MAX_WIDTH + 1)
    with pytest.raises(ValueError, match="whole rows"):
        backward(wide, wide, wide[0], mean[:1], rstd[:1])
    with pytest.raises(ValueError, match="grad_scale"):
        backward(x, f, gain, mean, rstd, f_cols=True)
    dx, df, _, dgain = backward(x[:0], f[:0], gain, mean[:0], rstd[:0])
    assert dx is not None and dx.shape == (0, 16) and df is not None and df.shape == (0, 16)
    assert dgain is not None and torch.equal(dgain, torch.zeros(16))
    _, df8, df8t, _ = backward(x[:0], f[:0], gain, mean[:0], rstd[:0], grad_scale=2.0, f_cols=True)
    assert df8 is not None and df8t is not None and df8t.shape == (16, 0)


@pytest.mark.parametrize(
    ("needs", "grad_scale", "f_cols"),
    [((True, True, True), None, False), ((False, True, False), None, False),
     ((True, True, True), 64.0, True), ((False, True, False), 64.0, False)],
)  # fmt: skip
def test_backward_custom_op_passes_opcheck(
    needs: tuple[bool, bool, bool], grad_scale: float | None, f_cols: bool
) -> None:
    x, f, gain = inputs(37, 80, torch.bfloat16)
    dy = torch.randn(37, 80).to(torch.bfloat16)
    _, _, _, mean, rstd = res_post_norm(x, f, gain, skip=SKIP, branch=BRANCH)
    torch.library.opcheck(
        res_post_norm_backward_op,
        (dy, f, gain, mean, rstd, SKIP, BRANCH, torch.bfloat16, *needs, grad_scale, f_cols),
        test_utils=(
            "test_schema",
            "test_faketensor",
            "test_autograd_registration",
            "test_aot_dispatch_dynamic",
        ),
    )


def test_the_block_hands_the_next_layers_the_casts_of_its_output() -> None:
    """A µS FP8 block on the Triton path returns, with its output, the casts its next FP8
    layers would make themselves: the layer's own cast kernel of that output, bit for bit
    (whatever the interpreter's rounding), and its transpose. The last block, whose output
    only the bf16 readout reads, makes none."""
    from models.config import ModelConfig
    from models.gpt import GPT, use_fp8

    model = GPT(ModelConfig(width=32, depth=2, head_dim=16, seq_len=16))
    use_fp8(model, grad_scale=64.0)
    x = torch.randn(2, 16, 32, requires_grad=True)
    with using_fp8_backend("triton"), torch.autocast("cpu", dtype=torch.bfloat16):
        y, x8 = model.blocks[0](x)
        _, none = model.blocks[1](y, x8, cast_output=False)
    assert x8 is not None and none is None
    own = triton_casts.saturating_cast(y.detach().flatten(0, 1), E4M3, 1.0)
    assert torch.equal(bits(x8.rows), bits(own))
    assert torch.equal(bits(x8.cols), bits(own).t())
    y.sum().backward()  # the input gradient flows through the fused kernel's backward
    assert x.grad is not None and bool(x.grad.isfinite().all())


@pytest.mark.parametrize("kind", ["linear", "gelu_mlp"])
def test_a_projection_ending_in_the_norm_computes_what_the_two_ops_do(kind: str) -> None:
    """The norm inside the projection's op (its backward taking f's gradient as e5m2 casts
    from the norm's backward kernel) against the projection's op followed by the norm's:
    output, casts and every gradient bit for bit (the same kernels on the same inputs)."""
    with using_fp8_backend("triton"):
        runs = norm_after_op_runs("cpu", kind=kind, tokens=24, width=32)
    for key, composed in runs["composed"].items():
        assert torch.equal(runs["fused"][key], composed), key


@pytest.mark.filterwarnings("ignore:Your compiler for AOTAutograd:UserWarning")  # the recorder
@pytest.mark.parametrize(("mlp", "grad_casts"), [("gelu", 1), ("swiglu", 3)])
def test_a_compiled_block_takes_its_projections_gradient_casts_from_the_norms(
    mlp: str, grad_casts: int
) -> None:
    """dynamo traces a µS FP8 block on the Triton path whole, the attention's and the MLP's
    last projections with the Res-Post-LN after each in one op; aot_eager runs it as eager
    does, bit for bit. The backward graph casts only the output gradients of the layers
    that no norm follows (qkv; SwiGLU's gate and up; the GELU MLP's up projection takes its
    own from the GELU cast): the norms' backward kernels cast the other two. The residual
    stream's gradient through each norm, skip * dy, is a torch op in the graph (for
    inductor to fuse into its sum), not an output of the norm's kernel."""
    from models.config import ModelConfig
    from models.gpt import Block, use_fp8

    torch.manual_seed(0)
    block = Block(ModelConfig(width=32, depth=1, head_dim=16, seq_len=16, mlp=mlp))
    use_fp8(block, grad_scale=64.0)
    x0 = torch.randn(2, 16, 32)
    backend = AotEagerAndRecordGraphs()
    results = []
    for fn in (block, torch.compile(block, backend=backend, fullgraph=True)):
        x = x0.clone().requires_grad_()
        block.zero_grad()
        with using_fp8_backend("triton"), torch.autocast("cpu", dtype=torch.bfloat16):
            y, y8 = fn(x)
        assert y8 is not None
        y.backward(torch.randn_like(y, generator=torch.Generator().manual_seed(1)))
        grads = [p.grad.clone() for p in block.parameters() if p.grad is not None]
        results.append((y, bits(y8.rows), bits(y8.cols), x.grad, *grads))
    for eager, compiled in zip(*results, strict=True):
        assert torch.equal(compiled, eager)
    ((backward,),) = (backend.bw_graphs,)
    assert backward.code.count("sweeper.res_post_norm_backward.default") == 2
    assert backward.code.count("sweeper.fp8_cast_transpose.default") == grad_casts
    # the kernel's need_x argument (its ninth), and skip * dy as torch's op, once a norm
    need_x = re.findall(r"res_post_norm_backward\.default\((?:[^,()]+, ){8}(\w+)", backward.code)
    assert need_x == ["False", "False"], need_x
    skip_times_dy = rf"aten\.mul\.Tensor\([^,()]+, {re.escape(repr(block.skip))}\)"
    assert len(re.findall(skip_times_dy, backward.code)) == 2
