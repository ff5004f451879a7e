"""AdamW with its two moments stored in bf16, or in FP8 with one scale per block of 128.

`TrainConfig.optimizer_state` picks it: ``fp32`` keeps torch's fused AdamW
(`models.optim`), ``bf16`` and ``fp8`` use `CompressedAdamW`. Each step decompresses a
parameter's moments to fp32, applies torch's AdamW update (same order of operations, same
decoupled weight decay as `models.optim` sets it up), and compresses them again; the master
weights stay fp32.

FP8 (Fishman et al. 2024): the first moment m in e4m3, the second v in e5m2. Adam's moments
are not unit-scaled (m ~ gradient size, v ~ its square), so they need scales: one fp32 scale
per block of ``block_size`` consecutive elements, ``amax / fp8_max`` rounded up to a power of
two. Blocks rather than one scale per tensor because a tensor's moments span many decades
(`benchmarks/fp8_moments.py`, width 256 after 200 steps: per tensor flushes 0.085% of the
non-zero m to zero, blocks of 128 0.0005%; update RMS error 4.4% against 3.7%).
The step rounds stochastically, in bf16 as in FP8 (`_round_stochastically` says why: round
to nearest leaves v stuck and trains ~1.5% worse with FP8 moments; an update below half of
bf16's spacing sticks the same way).
The power of two makes the scaling exact both ways, so compressing a decompressed state
gives back the same values: a checkpoint holds the moments decompressed (torch AdamW's
``exp_avg``/``exp_avg_sq``, shaped and sharded like the parameters) and resuming continues
the same curve.

Bytes of optimizer moments per parameter:

    fp32  4 + 4                 = 8
    bf16  2 + 2                 = 4
    fp8   1 + 1 + 2 * 4 / 128   = 2.0625   (two fp32 scales per block of 128)

The step makes no host synchronisation and writes every state tensor in place, so it can be
captured in a CUDA graph (`models.steps`): the step count is a tensor on the parameter's
device and the learning rate may be one. On CUDA it is one Triton kernel per parameter
(`kernels.triton_adam`, ``fused``); the torch code here is its reference and the CPU path.
With FSDP2 a parameter is a DTensor; the moments are kept for its local shard, so they shard
like the parameters.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal, TypeGuard

import torch

from kernels import E4M3, E5M2, HAS_TRITON, saturating_cast, uses_triton

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor
if HAS_TRITON:
    from kernels.triton_adam import adamw_step
    from kernels.triton_launch import INTERPRET

MomentPrecision = Literal["bf16", "fp8"]
BLOCK_SIZE = 128
# The moments' formats in FP8: m keeps e4m3's precision, v (squares) needs e5m2's range.
FP8_FORMATS = {"exp_avg": E4M3, "exp_avg_sq": E5M2}
MOMENTS = tuple(FP8_FORMATS)


def moment_bytes_per_param(precision: Literal["fp32", "bf16", "fp8"]) -> float:
    """Bytes the two Adam moments take per parameter (the table in the module docstring)."""
    if precision == "fp32":
        return 8.0
    if precision == "bf16":
        return 4.0
    return 2.0 + 2 * 4 / BLOCK_SIZE


def as_blocks(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """``x`` flattened to fp32 and zero-padded into rows of ``block_size``: (blocks, block_size)."""
    flat = x.detach().float().flatten()
    return torch.nn.functional.pad(flat, (0, -flat.numel() % block_size)).view(-1, block_size)


def block_scales(blocks: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per row of ``blocks``: the least power of two s with amax / s <= ``dtype``'s max. (blocks, 1)

    frexp gives amax / max = mantissa * 2^exponent with mantissa in [0.5, 1): s is 2^exponent,
    or 2^(exponent - 1) when the mantissa is exactly 0.5. An all-zero block gets 2^-126.
    """
    amax = blocks.abs().amax(dim=1, keepdim=True)
    ratio = (amax / torch.finfo(dtype).max).clamp_min(2.0**-126)
    mantissa, exponent = torch.frexp(ratio)
    exponent = exponent - (mantissa == 0.5).to(exponent.dtype)
    return torch.ldexp(torch.ones_like(ratio), exponent)


def quantize(
    x: torch.Tensor, dtype: torch.dtype, block_size: int, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` as ``dtype`` codes (blocks, block_size) and their fp32 scales (blocks, 1).

    Rounded to nearest, or stochastically with ``noise`` (uniform in [0, 1), one value per
    element of the padded blocks): down or up to the neighbouring codes with the
    probabilities that make the rounding unbiased.
    """
    blocks = as_blocks(x, block_size)
    scales = block_scales(blocks, dtype)
    scaled = blocks / scales
    if noise is not None:
        scaled = _round_stochastically(scaled, dtype, noise.view_as(scaled))
    return saturating_cast(scaled, dtype), scales


def _round_stochastically(x: torch.Tensor, dtype: torch.dtype, noise: torch.Tensor) -> torch.Tensor:
    """``x`` (within ``dtype``'s range) rounded onto ``dtype``'s grid, up with probability
    the fraction of the spacing it lies above the grid point below.

    Why: Adam's moments are averages updated by a fraction (1 - beta) of their value each
    step: 5% for v at beta2 = 0.95, below half of e5m2's spacing (12.5-25%), so rounding to
    nearest would leave v stuck where it is, and training with FP8 moments ends ~1.5% worse
    (tests/test_compressed_adam.py). Unbiased rounding lets the small steps add up.
    The spacing at |x| is eps * 2^floor(log2|x|), and eps * smallest_normal among subnormals.
    """
    info = torch.finfo(dtype)
    _, exponent = torch.frexp(x)  # |x| = mantissa * 2^exponent, mantissa in [0.5, 1)
    binade = torch.ldexp(torch.ones_like(x), exponent - 1).clamp_min(info.smallest_normal)
    spacing = binade * info.eps
    scaled = x.abs() / spacing  # exact: a power of two
    below = torch.floor(scaled)
    # Up when the dropped fraction and the noise reach one spacing. Compared rather than
    # added to ``below``: that sum of 24-bit noise and the integer bits would round in fp32.
    up = scaled - below + noise >= 1
    return (below + up) * spacing * x.sign()


def hashed_uniform(numel: int, step: torch.Tensor, salt: int, device: torch.device) -> torch.Tensor:
    """``numel`` values in [0, 1), a hash of (position, step, salt) (murmur3's finaliser).

    Not torch's RNG: the noise must not depend on a generator's state, which a checkpoint
    does not carry (a resumed run must round as the uninterrupted one did), nor consume the
    RNG the rest of training draws from; and it is plain tensor arithmetic, so the step
    stays capturable in a CUDA graph.
    """
    mask = 0xFFFFFFFF
    h = torch.arange(numel, device=device, dtype=torch.int64)
    h = (h + step.to(torch.int64) * 0x9E3779B9 + salt * 0x632BE5AB) & mask
    h = ((h ^ (h >> 16)) * 0x85EBCA6B) & mask
    h = ((h ^ (h >> 13)) * 0xC2B2AE35) & mask
    h = h ^ (h >> 16)
    return (h >> 8).to(torch.float32) * 2.0**-24


def dequantize(codes: torch.Tensor, scales: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The fp32 tensor shaped like ``like`` that `quantize` encoded."""
    return (codes.float() * scales).flatten()[: like.numel()].view(like.shape)


def _is_dtensor(t: torch.Tensor) -> TypeGuard[DTensor]:
    """Whether ``t`` is a DTensor (FSDP2's parameters and gradients). There is none before
    something imported torch.distributed.tensor, which this module leaves to FSDP2: importing
    it costs every process that imports `models` (the CLI, drivers, trial workers) ~0.7 s."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    return dtensor is not None and isinstance(t, dtensor.DTensor)


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's shard on this rank, else ``t``."""
    return t.to_local() if _is_dtensor(t) else t


class CompressedAdamW(torch.optim.Optimizer):
    """torch.optim.AdamW's update with m and v stored in bf16 or FP8 (see the module docstring).

    ``weight_decay`` is torch's: the step multiplies the weights by ``1 - lr * weight_decay``
    (`models.optim` gives each group ``lambda / lr`` to decouple it from the LR).

    ``fused``, as torch's: one Triton kernel per parameter (`kernels.triton_adam`) instead of
    the torch path, which stays the reference and the CPU path. None: fused for a parameter
    on CUDA where the FP8 backend uses Triton (`kernels.uses_triton`) and ``block_size`` is a
    power of two (the kernel's tiles); True requires it (CPU parameters only under
    ``TRITON_INTERPRET=1``); False never. Both write the same state tensors.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        *,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        precision: MomentPrecision = "fp8",
        block_size: int = BLOCK_SIZE,
        fused: bool | None = None,
    ):
        if precision not in ("bf16", "fp8"):
            raise ValueError(f"precision must be 'bf16' or 'fp8', got {precision!r}")
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.precision, self.block_size, self.fused = precision, block_size, fused
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        if fused:
            self._check_fusable()

    def _check_fusable(self) -> None:
        """Why ``fused=True`` cannot run here, as a ValueError, if it cannot."""
        if not HAS_TRITON:
            raise ValueError("CompressedAdamW(fused=True) needs Triton, which is not installed")
        if self.block_size & (self.block_size - 1):
            raise ValueError(f"fused=True needs a power-of-two block_size, got {self.block_size}")
        for param in self._params():
            device = _local(param).device
            if device.type != "cuda" and not (device.type == "cpu" and INTERPRET):
                raise ValueError(
                    f"CompressedAdamW(fused=True) needs CUDA parameters (CPU ones only under "
                    f"TRITON_INTERPRET=1), got one on {device}"
                )

    def _uses_kernel(self, weight: torch.Tensor) -> bool:
        """Whether the step of ``weight`` (a local tensor) runs the fused kernel."""
        if self.fused is not None:
            return self.fused
        power_of_two = self.block_size & (self.block_size - 1) == 0
        return weight.is_cuda and uses_triton(weight) and power_of_two

    def _init_state(self, param: torch.Tensor) -> dict[str, torch.Tensor]:
        local = _local(param)
        state = self.state[param]
        state["step"] = torch.zeros((), dtype=torch.float32, device=local.device)
        zeros = torch.zeros_like(local, dtype=torch.float32)
        self._store(state, zeros, zeros, salt=None)
        return state

    def _store(
        self,
        state: dict[str, Any],
        exp_avg: torch.Tensor,
        exp_avg_sq: torch.Tensor,
        *,
        salt: int | None,
    ) -> None:
        """Compress fp32 moments into ``state``: in place once its tensors exist (the step
        must keep the addresses a captured CUDA graph reads). Both formats round
        stochastically with noise hashed from the step and ``salt`` (the parameter's index),
        or to nearest when ``salt`` is None (a loaded state: exact, see the module
        docstring)."""
        for moment, (name, value) in enumerate(zip(MOMENTS, (exp_avg, exp_avg_sq), strict=True)):
            noise = None
            if salt is not None:  # one value per element, of the padded blocks in FP8
                size = value.numel()
                if self.precision == "fp8":
                    size += -size % self.block_size
                noise = hashed_uniform(size, state["step"], 2 * salt + moment, value.device)
            if self.precision == "bf16":
                if noise is not None:
                    value = _round_stochastically(value, torch.bfloat16, noise.view_as(value))
                encoded = {name: value.to(torch.bfloat16)}  # exact once rounded onto its grid
            else:
                codes, scales = quantize(value, FP8_FORMATS[name], self.block_size, noise)
                encoded = {name: codes, f"{name}_scale": scales}
            for key, tensor in encoded.items():
                if key in state:
                    state[key].copy_(tensor)
                else:
                    state[key] = tensor

    def _load(self, state: dict[str, Any], name: str, like: torch.Tensor) -> torch.Tensor:
        """One moment of a parameter's state decompressed to fp32, shaped like ``like``."""
        if self.precision == "bf16":
            return state[name].float()
        return dequantize(state[name], state[f"{name}_scale"], like)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = -1  # the parameter's place in `_params`: its noise's salt
        for group in self.param_groups:
            for param in group["params"]:
                index += 1
                if param.grad is None:
                    continue
                weight, grad = _local(param), _local(param.grad)
                state = self.state[param] if self.state[param] else self._init_state(param)
                state["step"] += 1
                if self._uses_kernel(weight):
                    self._fused_step(state, weight, grad, group, salt=index)
                else:
                    self._torch_step(state, weight, grad.float(), group, salt=index)
        return loss

    def _torch_step(
        self,
        state: dict[str, Any],
        weight: torch.Tensor,
        grad: torch.Tensor,
        group: dict[str, Any],
        *,
        salt: int,
    ) -> None:
        """The step of one parameter in torch ops: the reference of `_fused_step`."""
        beta1, beta2 = group["betas"]
        lr, eps, wd, step = group["lr"], group["eps"], group["weight_decay"], state["step"]
        exp_avg, exp_avg_sq = self._updated_moments(state, weight, grad, group)
        # torch's AdamW: decoupled decay, then the bias-corrected update.
        weight.mul_(1 - lr * wd)
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step).sqrt()
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        weight.add_(exp_avg / denom * (-lr / bias_correction1))
        self._store(state, exp_avg, exp_avg_sq, salt=salt)

    def _fused_step(
        self,
        state: dict[str, Any],
        weight: torch.Tensor,
        grad: torch.Tensor,
        group: dict[str, Any],
        *,
        salt: int,
    ) -> None:
        """`_torch_step` in one kernel, the state written in place (`kernels.triton_adam`)."""
        beta1, beta2 = group["betas"]
        scales = {f"{name}_scale": state.get(f"{name}_scale") for name in MOMENTS}
        adamw_step(
            weight,
            grad,
            state["exp_avg"],
            state["exp_avg_sq"],
            state["step"],
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            salt=2 * salt,  # m's noise salt, as `_store` numbers them; v's is the next
            **scales,
        )

    def _updated_moments(
        self,
        state: dict[str, Any],
        like: torch.Tensor,
        grad: torch.Tensor,
        group: dict[str, Any],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """m and v of ``state`` decompressed and moved by ``grad``, in fp32."""
        beta1, beta2 = group["betas"]
        exp_avg = self._load(state, "exp_avg", like)
        exp_avg_sq = self._load(state, "exp_avg_sq", like)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        return exp_avg, exp_avg_sq

    @torch.no_grad()
    def next_moments(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(moment name, fp32 value) that the next step would compress, for each parameter
        with a gradient and a state; nothing changes (`models.fp8_health.moment_health`)."""
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None or not self.state[param]:
                    continue
                grad = _local(param.grad).float()
                moments = self._updated_moments(self.state[param], _local(param), grad, group)
                yield from zip(MOMENTS, moments, strict=True)

    def _params(self) -> list[torch.Tensor]:
        """Every parameter in the order `state_dict` numbers them."""
        return [p for group in self.param_groups for p in group["params"]]

    def moments(self) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """Each parameter with a state and its moments as fp32 tensors of its local shape."""
        for param in self._params():
            state = self.state[param]
            if state:
                local = _local(param)
                yield param, {name: self._load(state, name, local) for name in MOMENTS}

    def state_dict(self) -> dict[str, Any]:
        """torch AdamW's form: ``step``, ``exp_avg``, ``exp_avg_sq`` in fp32, each moment shaped
        (and, for a DTensor parameter, sharded) like its parameter, so checkpoints save, gather
        and reshard them as they do torch's (`load_state_dict` compresses them again)."""
        packed = super().state_dict()
        decompressed = dict(self.moments())
        for index, param in enumerate(self._params()):
            if index not in packed["state"]:
                continue
            entry = {"step": packed["state"][index]["step"]}
            for name, value in decompressed[param].items():
                if _is_dtensor(param):
                    value = type(param).from_local(
                        value,
                        param.device_mesh,
                        param.placements,
                        shape=param.shape,
                        stride=param.stride(),
                    )
                entry[name] = value
            packed["state"][index] = entry
        return packed

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load `state_dict`'s form (or torch AdamW's): fp32 moments, compressed here."""
        super().load_state_dict(state_dict)
        for param in self._params():
            state = self.state[param]
            if not state:
                continue
            local = _local(param)
            exp_avg, exp_avg_sq = (_local(state.pop(name)).float() for name in MOMENTS)
            state["step"] = torch.as_tensor(state["step"], dtype=torch.float32).to(local.device)
            self._store(state, exp_avg.to(local.device), exp_avg_sq.to(local.device), salt=None)
