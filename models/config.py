"""Model and training configuration, defined once and passed along, plus the preset registry.

Both are frozen pydantic models: the CLI, the sweep spec and the REST API validate through
them, so a bad value gets the same message naming the field everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from kernels import Backend as FP8Backend
from models.data import STDLIB, DataError, is_prepared, read_meta
from models.width_rules import Depth, DepthRule, GroupRule, ParamGroup, group_rule

Parametrization = Literal["mus", "sp"]
Precision = Literal["fp8", "bf16", "fp32"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
Schedule = Literal["cosine", "linear"]
AttentionOutputScale = Literal["position", "none"]
ReadoutLR = Literal["constant", "sqrt"]
OptimizerState = Literal["fp32", "bf16", "fp8"]
MLPKind = Literal["gelu", "swiglu", "smooth_swiglu"]
# SwiGLU's hidden size is rounded to this multiple (whole tiles for the FP8 GEMMs).
GLU_HIDDEN_MULTIPLE = 64


class ModelConfig(BaseModel):
    """Shape and parametrization of the GPT."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    vocab_size: int = Field(
        256, ge=2, description="bytes: 256; a prepared dataset's comes from its meta.json"
    )
    depth: int = Field(4, ge=1, description="transformer blocks")
    width: int = Field(128, ge=1, description="d_model")
    head_dim: int = Field(32, ge=1, description="fixed across widths: heads = width / head_dim")
    mlp_ratio: int = Field(
        4, ge=1, description="MLP hidden size = mlp_ratio * width (SwiGLU: 2/3 of that)"
    )
    mlp: MLPKind = Field(
        "gelu",
        description="gelu, swiglu (silu(gate) * up), or smooth_swiglu (SwiGLU with per-channel"
        " scales before the down projection's FP8 cast, Fishman et al. 2024)",
    )
    seq_len: int = Field(128, ge=2, description="context length in tokens")
    parametrization: Parametrization = Field("mus", description="mus (unit scaling) or sp")
    tau: float = Field(
        0.4, gt=0.0, lt=1.0, description="µS residual mix: x <- sqrt(1-tau) x + sqrt(tau) LN(f(x))"
    )
    readout_multiplier: float = Field(
        1.0, gt=0.0, description="µS alpha_out: logits = alpha_out * x W^T / sqrt(width)"
    )
    readout_lr: ReadoutLR = Field(
        "constant", description="µS readout LR: constant in width, or scaled by sqrt(base/width)"
    )
    attn_output_scale: AttentionOutputScale = Field(
        "none",
        description="µS: multiply attention outputs by sqrt(t+1) (position) or not (none)",
    )
    base_width: int = Field(256, ge=1, description="d0 of the µS width rules (LR scale 1 here)")
    depth_rule: DepthRule = Field(
        "none",
        description="µS depth rule: none, sqrt (Depth-µP) or completep: tau and the hidden LR"
        " scale with base_depth / depth",
    )
    base_depth: int = Field(4, ge=1, description="L0 of the µS depth rules (tau as given here)")

    @model_validator(mode="after")
    def _width_splits_into_heads(self) -> ModelConfig:
        if self.width % self.head_dim:
            raise ValueError(f"width {self.width} must be a multiple of head_dim {self.head_dim}")
        return self

    @model_validator(mode="after")
    def _depth_rule_is_mus(self) -> ModelConfig:
        if self.depth_rule != "none" and self.parametrization != "mus":
            raise ValueError("depth_rule applies to the mus parametrization only")
        if not self.branch_tau < 1:
            raise ValueError(
                f"tau {self.tau} at depth {self.depth} under {self.depth_rule} (base_depth"
                f" {self.base_depth}) is {self.branch_tau:.3g}, not below 1: raise depth or"
                " lower tau"
            )
        return self

    @property
    def depth_scaling(self) -> Depth:
        return Depth(self.depth, self.base_depth, self.depth_rule)

    @property
    def branch_tau(self) -> float:
        """The residual mix the blocks use: tau after the depth rule."""
        return self.depth_scaling.branch_share(self.tau)

    @property
    def n_heads(self) -> int:
        return self.width // self.head_dim

    @property
    def mlp_hidden(self) -> int:
        """The MLP's hidden size: ``mlp_ratio * width``, or for SwiGLU 2/3 of it (its three
        matrices then hold as many weights as GELU's two), rounded to a multiple of 64."""
        if self.mlp == "gelu":
            return self.mlp_ratio * self.width
        multiples = round(2 * self.mlp_ratio * self.width / (3 * GLU_HIDDEN_MULTIPLE))
        return GLU_HIDDEN_MULTIPLE * max(1, multiples)

    def parameter_groups(self) -> list[tuple[ParamGroup, int]]:
        """Each distinct (width-rule group, fan-in) among the parameters: what
        `GPT.parameter_groups` yields tensor by tensor (a test holds them equal)."""
        d = self.width
        return [
            ("hidden", d),  # QKV, attention out, MLP up (and SwiGLU's gate)
            ("hidden", self.mlp_hidden),  # MLP down
            ("embedding", d),
            ("readout", d),
            ("norm", d),
        ]

    def group_rule(
        self, group: ParamGroup, fan_in: int, *, base_lr: float, base_wd: float
    ) -> GroupRule:
        """The width rules of ``group`` at ``fan_in`` in this model's parametrization."""
        return group_rule(
            group,
            parametrization=self.parametrization,
            fan_in=fan_in,
            base_lr=base_lr,
            base_wd=base_wd,
            base_width=self.base_width,
            readout_multiplier=self.readout_multiplier,
            readout_lr=self.readout_lr,
            depth=self.depth_scaling,
        )

    @property
    def parameter_count(self) -> int:
        """Weights and LayerNorm gains: blocks (QKV, out, MLP up, down and SwiGLU's gate, two
        norms), the embedding, the readout and the final norm."""
        mlp_matrices = 2 if self.mlp == "gelu" else 3
        mlp = mlp_matrices * self.mlp_hidden * self.width
        per_block = (3 + 1) * self.width**2 + mlp + 2 * self.width
        return self.depth * per_block + 2 * self.vocab_size * self.width + self.width


class TrainConfig(BaseModel):
    """One training run: a model, its data, the optimizer's base values and the schedule."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: str = Field(
        "stdlib",
        description="a text file (bytes), a directory from `sweeper data prepare`, or 'stdlib'"
        " (Python's own source)",
    )
    steps: int = Field(200, ge=1, description="optimizer steps")
    batch_size: int = Field(32, ge=1, description="sequences per step")
    precision: Precision = Field("fp8", description="hidden matmuls: fp8 (e4m3/e5m2), bf16, fp32")
    lr: float = Field(2**-5, gt=0.0, description="base learning rate eta (width rules scale it)")
    wd: float = Field(0.0, ge=0.0, description="base decoupled weight decay lambda per step")
    warmup: float = Field(0.1, ge=0.0, lt=1.0, description="linear warmup, fraction of steps")
    schedule: Schedule = Field("cosine", description="decay after warmup")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="schedule floor, times peak")
    beta1: float = Field(0.9, ge=0.0, lt=1.0)
    beta2: float = Field(0.95, ge=0.0, lt=1.0)
    optimizer_state: OptimizerState = Field(
        "fp32",
        description="Adam moments: fp32 (torch's fused AdamW), bf16, or fp8 (m e4m3, v e5m2,"
        " a scale per block of 128)",
    )
    fp8_grad_scale: float | None = Field(
        None, gt=0.0, description="static FP8 backward scale; default tokens/step * sqrt(width)"
    )
    fp8_backend: FP8Backend = Field(
        "auto",
        description="FP8 matmuls: auto (Triton on CUDA, else emulated), triton or emulate;"
        " $SWEEPER_FP8_BACKEND overrides it; 'triton' needs Triton where the run trains",
    )
    seed: int = Field(0, ge=0)
    eval_interval: int = Field(50, ge=1, description="steps between evaluations and reports")
    eval_batches: int = Field(8, ge=1, description="batches of batch_size in each evaluation")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    compile: bool = Field(False, description="torch.compile the model")
    cuda_graphs: bool = Field(
        True,
        description="replay each step from CUDA graphs (one GPU; ignored on CPU and when"
        " data-parallel)",
    )

    @field_validator("data")
    @classmethod
    def _data_path_absolute(cls, data: str) -> str:
        # Trials and launches run in Ray workers with another working directory: a path
        # relative to where the user stood would name nothing there.
        if data == STDLIB:
            return data
        try:
            return str(Path(data).expanduser().absolute())
        except RuntimeError as e:  # ~user of no such user
            raise ValueError(str(e)) from None

    @model_validator(mode="wrap")
    @classmethod
    def _data_readable(
        cls, values: object, handler: ModelWrapValidatorHandler[TrainConfig], info: ValidationInfo
    ) -> TrainConfig:
        """The data exists; a prepared directory's meta.json gives the vocabulary size.

        A vocab_size left unset takes the dataset's; one set to another value is an error
        on ``model.vocab_size``. A stored config is read back with context
        {"check_files": False}: data deleted since must not make its sweep unreadable."""
        self = handler(values)
        if not (info.context or {}).get("check_files", True) or self.data == STDLIB:
            return self
        if not os.path.exists(self.data):  # os.path: a name too long is missing, not an error
            raise ValueError(f"data: no such file or directory {self.data!r} (or use 'stdlib')")
        if not is_prepared(self.data):
            return self
        try:
            vocab_size = read_meta(self.data).vocab_size
        except DataError as e:
            raise ValueError(f"data: {e}") from None
        if "vocab_size" not in self.model.model_fields_set:
            model = self.model.model_copy(update={"vocab_size": vocab_size})
            return self.model_copy(update={"model": model})
        if self.model.vocab_size != vocab_size:
            error = PydanticCustomError(
                "vocab_mismatch",
                "{given} does not match the vocabulary of the data ({vocab} tokens, from"
                " {meta}): leave vocab_size out to take the data's",
                {
                    "given": self.model.vocab_size,
                    "vocab": vocab_size,
                    "meta": str(Path(self.data) / "meta.json"),
                },
            )
            given = self.model.vocab_size
            raise ValidationError.from_exception_data(
                cls.__name__,
                [InitErrorDetails(type=error, loc=("model", "vocab_size"), input=given)],
            )
        return self

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.model.seq_len

    def with_overrides(self, overrides: Mapping[str, Any]) -> TrainConfig:
        """This run with fields of either config changed, by name (``width``, ``lr``, ...):
        how the CLI's options, a sweep's trials and a launch make their runs. Raises
        pydantic's ValidationError naming the field. Other ``data`` without a ``vocab_size``
        takes that data's vocabulary (a prepared directory's meta.json)."""
        model_fields = {k: v for k, v in overrides.items() if k in ModelConfig.model_fields}
        train_fields = {k: v for k, v in overrides.items() if k not in model_fields}
        keep = self.model.model_dump(exclude={"vocab_size"} if "data" in train_fields else None)
        model = ModelConfig.model_validate(keep | model_fields)
        return TrainConfig.model_validate(self.model_dump() | train_fields | {"model": model})


# Named sizes, looked up by name. head_dim stays 64 so that only width and depth change;
# parameter counts (about 12 * depth * width^2) name them. `debug` is the one tests use.
PRESETS: dict[str, ModelConfig] = {
    "debug": ModelConfig(depth=2, width=64, head_dim=16, seq_len=64),
    "25m": ModelConfig(depth=8, width=512, head_dim=64, seq_len=512),
    "200m": ModelConfig(depth=16, width=1024, head_dim=64, seq_len=1024),
    "1b": ModelConfig(depth=24, width=2048, head_dim=64, seq_len=2048),
    "3b": ModelConfig(depth=32, width=2560, head_dim=64, seq_len=2048),
    "7b": ModelConfig(depth=32, width=4096, head_dim=64, seq_len=2048),
    "13b": ModelConfig(depth=40, width=5120, head_dim=64, seq_len=2048),
    "30b": ModelConfig(depth=40, width=8192, head_dim=64, seq_len=2048),
}


def preset(name: str) -> ModelConfig:
    """The ModelConfig registered under ``name``."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
