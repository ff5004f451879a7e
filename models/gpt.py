"""The GPT, in µS (unit scaling, Res-Post-LN) and SP (pre-LN, std 0.02) form.

Reads top to bottom: linear layers, attention, MLPs (GELU, SwiGLU), block, model. Every
init, multiplier and learning rate comes from `models.width_rules`; this file only delegates
to it.

µS block (width d, residual mix tau):
    x <- sqrt(1 - tau) * x + sqrt(tau) * LN(attn(x))
    x <- sqrt(1 - tau) * x + sqrt(tau) * LN(mlp(x))
With unit-variance x and LN(f(x)) uncorrelated, the stream keeps unit variance at any depth,
so every hidden matmul sees unit-scale inputs: that is what lets FP8 run without scales.

On the Triton FP8 path each of those lines is one kernel (`kernels.triton_norm`) that also
writes the e4m3 casts of the new x, which the next sub-layer's first FP8 layers (qkv; the
MLP's up and gate) take as they are (`E4M3Copies`) instead of casting x again. It runs
inside the op of the sub-layer's last projection (`ResPostLN`, `forward_into`), whose
backward then takes its output gradient's e5m2 casts from the norm's backward kernel.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kernels import HAS_TRITON, E4M3Copies, fp8_gelu_mlp, fp8_linear, uses_triton
from models.config import ModelConfig
from models.width_rules import ParamGroup, glu_multiplier, init_std, multiplier

if HAS_TRITON:  # CPU-only installs may lack Triton; the emulated path needs none of it
    from kernels.ops import fp8_gelu_mlp_norm_triton, fp8_linear_norm_triton
    from kernels.triton_norm import MAX_WIDTH, ResidualNorm

# Smooth-SwiGLU rescales a channel of the down projection's input only once its largest
# value passed this: about 4x the largest of a few million unit-Gaussian values, and 1/28 of
# e4m3's max, so ordinary channels keep SwiGLU's numerics exactly.
SMOOTH_THRESHOLD = 16.0


class ScaledLinear(nn.Module):
    """Bias-free linear layer with a static output multiplier: ``y = (x W^T) * multiplier``.

    Hidden layers route through the FP8 kernel once `use_fp8` has set ``fp8_grad_scale``.
    """

    def __init__(self, fan_in: int, fan_out: int, group: ParamGroup, config: ModelConfig):
        super().__init__()
        self.group, self.fan_in = group, fan_in
        self.multiplier = multiplier(
            group,
            parametrization=config.parametrization,
            fan_in=fan_in,
            readout_multiplier=config.readout_multiplier,
        )
        std = init_std(group, parametrization=config.parametrization)
        self.weight = nn.Parameter(torch.randn(fan_out, fan_in) * std)
        self.fp8_grad_scale: float | None = None

    def fp8_operands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The input and weight this layer multiplies: what its FP8 casts see."""
        return x, self.weight

    def takes_e4m3_copies(self, x: torch.Tensor) -> bool:
        """Whether `forward` takes x's e4m3 casts made by x's producer: FP8 on the Triton
        kernels (the emulation casts for itself)."""
        return self.fp8_grad_scale is not None and uses_triton(x)

    def fusable(self) -> bool:
        """Whether an op that fuses this FP8 layer with its neighbours (`MLP`'s) computes what
        calling the layer would: FP8 on, `forward` not overridden by a subclass, and no hooks
        (a fused op would skip them: `models.fp8_health` and `models.coord_check` observe
        each layer's input and gradient through hooks)."""
        hooks = (
            self._forward_hooks,
            self._forward_pre_hooks,
            self._backward_hooks,
            self._backward_pre_hooks,
        )
        return (
            self.fp8_grad_scale is not None
            and type(self).forward is ScaledLinear.forward
            and not any(hooks)
        )

    def forward(self, x: torch.Tensor, x8: E4M3Copies | None = None) -> torch.Tensor:
        """``x8``: x's e4m3 casts where its producer made them (FP8 only; see `fp8_linear`)."""
        x, weight = self.fp8_operands(x)
        if self.fp8_grad_scale is not None:
            return fp8_linear(
                x, weight, scale=self.multiplier, grad_scale=self.fp8_grad_scale, x8=x8
            )
        return F.linear(x, weight) * self.multiplier


class SmoothedLinear(ScaledLinear):
    """Smooth-SwiGLU's down projection (Fishman et al. 2024): input channel k divided by s_k
    and weight column k multiplied by it, so the product is the same and an outlier channel
    of the input reaches its FP8 cast scaled down.

    s_k = sqrt(amax(x_k) / amax(W[:, k])) (at least 1; both operands then share the range)
    for each channel whose largest input of the previous training step passed
    `SMOOTH_THRESHOLD`, else 1. The scales are a buffer that the step updates in place from
    that step's per-channel max: every scale a matmul sees is fixed before the step starts
    (no amax on its critical path), and the step stays capturable in a CUDA graph.
    """

    def __init__(self, fan_in: int, fan_out: int, group: ParamGroup, config: ModelConfig):
        super().__init__(fan_in, fan_out, group, config)
        self.register_buffer("channel_scale", torch.ones(fan_in))  # (K,), s_k

    def fp8_operands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # A copy: autograd keeps it for the backward, and the forward updates the buffer.
        scale = self.channel_scale.clone()  # type: ignore[operator]
        return x / scale.to(x.dtype), self.weight * scale

    def forward(self, x: torch.Tensor, x8: E4M3Copies | None = None) -> torch.Tensor:
        if x8 is not None:  # the casts of x, where this layer casts x / s
            raise ValueError("SmoothedLinear scales its input before the cast: it takes no x8")
        y = super().forward(x)
        if torch.is_grad_enabled():  # training steps; evaluation batches leave the scales
            with torch.no_grad():
                x_max = x.abs().flatten(0, -2).amax(dim=0).float()  # (K,)
                w_max = self.weight.abs().amax(dim=0)  # (K,)
                smooth = (x_max / w_max).sqrt().clamp_min(1.0)
                self.channel_scale.copy_(torch.where(x_max > SMOOTH_THRESHOLD, smooth, 1.0))  # type: ignore[operator]
        return y


class ResPostLN(NamedTuple):
    """Where a µS sub-layer's output f goes (`Block`): ``x <- skip * x + branch * norm(f)``.

    ``fused``: its kernel's form (`kernels.triton_norm.ResidualNorm`, which also writes the
    new x's e4m3 casts) where FP8 layers on the Triton kernels read the result, else None
    (they cast it themselves, to the same bytes: both saturate the stored value). The
    sub-layer's last projection runs it inside its own op where it can (`after`), so that
    its backward takes f's gradient already cast to e5m2 from the norm's backward kernel.
    """

    x: torch.Tensor
    norm: nn.LayerNorm
    skip: float
    branch: float
    fused: ResidualNorm | None

    def __call__(self, f: torch.Tensor) -> tuple[torch.Tensor, E4M3Copies | None]:
        """The new x, and its e4m3 casts where ``fused``."""
        if self.fused is not None:
            return self.fused(f)
        return self.skip * self.x + self.branch * self.norm(f), None

    def after(self, layer: ScaledLinear, x: torch.Tensor) -> tuple[torch.Tensor, E4M3Copies | None]:
        """``self(layer(x))``, in the layer's op where it can be (`ScaledLinear.fusable`)."""
        if self.fused is None or not layer.fusable():
            return self(layer(x))
        assert layer.fp8_grad_scale is not None
        return fp8_linear_norm_triton(
            x,
            layer.weight,
            scale=layer.multiplier,
            grad_scale=layer.fp8_grad_scale,
            then=self.fused,
        )


def _rope_tables(seq_len: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of rotary position embeddings, (T, head_dim/2) each."""
    inv_freq = 10000.0 ** (-torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(torch.arange(seq_len).float(), inv_freq)
    return angles.cos(), angles.sin()


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, H, T, hd/2) each
    rotated = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.to(x.dtype)


class _EndsInProjection(nn.Module):
    """A sub-layer whose output is its last linear layer's (attention's out, SwiGLU's down),
    which can run the block's Res-Post-LN in its own op (`forward_into`)."""

    def forward(self, x: torch.Tensor, x8: E4M3Copies | None = None) -> torch.Tensor:
        layer, layer_input = self._last_projection(x, x8)
        return layer(layer_input)

    def forward_into(
        self, x: torch.Tensor, x8: E4M3Copies | None, then: ResPostLN
    ) -> tuple[torch.Tensor, E4M3Copies | None]:
        """``then(self(x, x8))``, the last projection and ``then`` in one op where they can be."""
        layer, layer_input = self._last_projection(x, x8)
        return then.after(layer, layer_input)

    def _last_projection(
        self, x: torch.Tensor, x8: E4M3Copies | None
    ) -> tuple[ScaledLinear, torch.Tensor]:
        """The last linear layer and its input."""
        raise NotImplementedError


class CausalSelfAttention(_EndsInProjection):
    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.width
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.qkv = ScaledLinear(d, 3 * d, "hidden", config)
        self.out = ScaledLinear(d, d, "hidden", config)
        cos, sin = _rope_tables(config.seq_len, config.head_dim)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        # A causal average over t+1 independent unit-variance values has variance 1/(t+1):
        # "position" multiplies by sqrt(t+1) to undo that. On real text the values are
        # correlated across positions (repeated bytes share embeddings), so the average
        # shrinks far less and the factor overshoots (RMS 2-11 at init, seq 64-256);
        # "none" is the default (tests/test_coord_check.py measures both).
        rescale = config.parametrization == "mus" and config.attn_output_scale == "position"
        position_scale = torch.arange(1, config.seq_len + 1).float().sqrt()
        self.register_buffer(
            "position_scale",
            position_scale[:, None] if rescale else torch.ones(config.seq_len, 1),
            persistent=False,
        )

    def _last_projection(
        self, x: torch.Tensor, x8: E4M3Copies | None
    ) -> tuple[ScaledLinear, torch.Tensor]:
        """The output projection and the heads' outputs, concatenated (B, T, C)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x, x8).split(C, dim=2)  # (B, T, C) each
        q, k, v = (t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]  # type: ignore[index]
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)  # (B, H, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.head_dim**-0.5)
        y = y * self.position_scale[:T].to(y.dtype)  # type: ignore[index]
        return self.out, y.transpose(1, 2).reshape(B, T, C)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden = config.mlp_hidden
        self.up = ScaledLinear(config.width, hidden, "hidden", config)
        self.down = ScaledLinear(hidden, config.width, "hidden", config)

    def forward(self, x: torch.Tensor, x8: E4M3Copies | None = None) -> torch.Tensor:
        one_op = self._one_op()
        if one_op is not None:
            # One op, whose Triton form runs GELU (and its backward) in the casts of the
            # GEMMs' outputs: the same numbers as the two layers below.
            w_up, w_down, scales, grad_scale = one_op
            return fp8_gelu_mlp(x, w_up, w_down, scales=scales, grad_scale=grad_scale, x8=x8)
        return self.down(F.gelu(self.up(x, x8)))

    def forward_into(
        self, x: torch.Tensor, x8: E4M3Copies | None, then: ResPostLN
    ) -> tuple[torch.Tensor, E4M3Copies | None]:
        """``then(self(x, x8))``, in one op where the MLP's is and ``then`` has a kernel."""
        one_op = self._one_op()
        if then.fused is None or one_op is None:
            return then(self(x, x8))
        w_up, w_down, scales, grad_scale = one_op
        return fp8_gelu_mlp_norm_triton(
            x, w_up, w_down, scales=scales, grad_scale=grad_scale, then=then.fused, x8=x8
        )

    def _one_op(self) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float], float] | None:
        """The MLP op's weights, scales and grad scale where both layers can run as it (plain
        FP8 layers, one grad scale), else None."""
        up, down = self.up, self.down
        if not (up.fusable() and down.fusable() and up.fp8_grad_scale == down.fp8_grad_scale):
            return None
        assert up.fp8_grad_scale is not None
        return up.weight, down.weight, (up.multiplier, down.multiplier), up.fp8_grad_scale


class SwiGLU(_EndsInProjection):
    """``down(silu(gate(x)) * up(x) * m)``, m restoring the product to unit scale under µS
    (`width_rules.glu_multiplier`); Smooth-SwiGLU's down projection is a `SmoothedLinear`
    (its 1/s_k on the product's channel k is Fishman et al.'s scale on the linear branch)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        d, hidden = config.width, config.mlp_hidden
        self.gate = ScaledLinear(d, hidden, "hidden", config)
        self.up = ScaledLinear(d, hidden, "hidden", config)
        down = SmoothedLinear if config.mlp == "smooth_swiglu" else ScaledLinear
        self.down = down(hidden, d, "hidden", config)
        self.product_multiplier = glu_multiplier(parametrization=config.parametrization)

    def _last_projection(
        self, x: torch.Tensor, x8: E4M3Copies | None
    ) -> tuple[ScaledLinear, torch.Tensor]:
        """The down projection and its input, the product (B, T, hidden)."""
        gated = F.silu(self.gate(x, x8)) * self.up(x, x8)
        return self.down, gated * self.product_multiplier


def _layer_norm(width: int) -> nn.LayerNorm:
    return nn.LayerNorm(width, bias=False)  # gain only, initialised at 1 (norm group)


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.post_norm = config.parametrization == "mus"
        self.attn = CausalSelfAttention(config)
        self.mlp = MLP(config) if config.mlp == "gelu" else SwiGLU(config)
        self.norm_attn, self.norm_mlp = _layer_norm(config.width), _layer_norm(config.width)
        self.skip, self.branch = math.sqrt(1 - config.branch_tau), math.sqrt(config.branch_tau)

    def forward(
        self, x: torch.Tensor, x8: E4M3Copies | None = None, *, cast_output: bool = True
    ) -> tuple[torch.Tensor, E4M3Copies | None]:
        """The block's output and, where it made them, their e4m3 casts for the next block.

        ``x8``: x's casts, from the block before; ``cast_output``: whether an FP8 layer reads
        the output (not the last block's: the readout is bf16).
        """
        if self.post_norm:  # µS: Res-Post-LN with variance-preserving skips
            x, x8 = self.attn.forward_into(x, x8, self._res_post_ln(x, self.norm_attn, cast=True))
            then = self._res_post_ln(x, self.norm_mlp, cast=cast_output)
            return self.mlp.forward_into(x, x8, then)
        x = x + self.attn(self.norm_attn(x))  # SP: pre-LN
        return x + self.mlp(self.norm_mlp(x)), None

    def _res_post_ln(self, x: torch.Tensor, norm: nn.LayerNorm, *, cast: bool) -> ResPostLN:
        """``skip * x + branch * norm(f)`` of a sub-layer's output f, on the norm's kernel
        (with the new x's e4m3 casts) where FP8 layers on the Triton kernels read it."""
        fused = None
        if cast and self.attn.qkv.takes_e4m3_copies(x) and x.shape[-1] <= MAX_WIDTH:
            fused = ResidualNorm(x, norm.weight, self.skip, self.branch, norm.eps)
        return ResPostLN(x, norm, self.skip, self.branch, fused)


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.width)
        nn.init.normal_(
            self.embedding.weight, std=init_std("embedding", parametrization=config.parametrization)
        )
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm_final = _layer_norm(config.width)
        self.readout = ScaledLinear(config.width, config.vocab_size, "readout", config)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids (B, T)."""
        x = self.embedding(idx)  # (B, T, C)
        x8 = None  # the embedding's output has no casts: the first block's layers cast it
        for i, block in enumerate(self.blocks):
            x, x8 = block(x, x8, cast_output=i < len(self.blocks) - 1)
        return self.readout(self.norm_final(x))  # (B, T, vocab)

    def parameter_groups(self) -> Iterator[tuple[ParamGroup, int, torch.Tensor]]:
        """Every parameter with its width-rule group and fan-in."""
        for module in self.modules():
            if isinstance(module, ScaledLinear):
                yield module.group, module.fan_in, module.weight
            elif isinstance(module, nn.Embedding):
                yield "embedding", module.embedding_dim, module.weight
            elif isinstance(module, nn.LayerNorm):
                yield "norm", self.config.width, module.weight


def hidden_linears(model: nn.Module) -> Iterator[tuple[str, ScaledLinear]]:
    """The hidden matrix layers by name: the ones FP8 applies to."""
    for name, module in model.named_modules():
        if isinstance(module, ScaledLinear) and module.group == "hidden":
            yield name, module


def use_fp8(model: nn.Module, *, grad_scale: float) -> None:
    """Route every hidden linear layer through the FP8 kernel (embedding, readout stay bf16)."""
    for _, module in hidden_linears(model):
        module.fp8_grad_scale = grad_scale


def default_fp8_grad_scale(*, tokens_per_step: int, width: int) -> float:
    """Static backward scale that puts hidden-layer gradients near unit scale at init.

    The mean loss makes d(loss)/d(logit) ~ 1/tokens; the readout (unit weights, 1/sqrt(d)
    multiplier) maps it to ~1/(tokens * sqrt(d)) per coordinate of the residual stream, and
    Res-Post-LN keeps that scale through the blocks. The product undoes both.
    """
    return float(tokens_per_step) * math.sqrt(width)
