"""The width rules: how each parameter group is initialised, scaled and optimised.

One place holds every rule of µS and of the standard-parametrization (SP) baseline. The
model and the optimizer only ask these functions; tests check each against its formula.

Groups:
    hidden     every matrix inside a block (QKV, attention out, MLP up, MLP down, SwiGLU gate)
    embedding  the token embedding table
    readout    the LM head (after the final LayerNorm)
    norm       LayerNorm gains

µS (arXiv 2502.05967): unit-variance init everywhere; hidden layers and the readout multiply
their output by ``1/sqrt(fan_in)`` (static, so FP8 needs no scale factors); hidden LR
``eta * sqrt(d0 / fan_in)``, the Adam rule that makes the update of the effective weight scale
as ``1/fan_in`` (µP); the other groups keep ``eta``. Weight decay is decoupled from the LR and
does not change with width; norms and embeddings are not decayed.

SP: init std 0.02, no multipliers, one LR for everything.

Depth (µS only): a residual branch's multiplier (L0/L)^alpha keeps the optimum fixed as the
depth L grows from the proxies' L0: alpha = 1/2 is Depth-µP (rule ``sqrt``), alpha = 1 is
CompleteP (Dey et al. 2025, rule ``completep``). In µS's variance-preserving mix
``x <- sqrt(1 - tau) x + sqrt(tau) LN(f(x))`` the branch multiplier is sqrt(tau), so tau
scales by (L0/L)^(2 alpha) and the stream stays at unit variance at any depth. Adam's
hidden LR scales by (L0/L)^(1 - alpha): constant under CompleteP, 1/sqrt(L) under Depth-µP.
The decoupled weight decay is a per-step shrink and stays as it is. ``none`` keeps tau and
the LRs as they are at every depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # models.config asks these rules on a config's behalf
    from models.config import Parametrization, ReadoutLR

ParamGroup = Literal["hidden", "embedding", "readout", "norm"]
PARAM_GROUPS: tuple[ParamGroup, ...] = ("hidden", "embedding", "readout", "norm")

SP_INIT_STD = 0.02

DepthRule = Literal["none", "sqrt", "completep"]
DEPTH_RULES: tuple[DepthRule, ...] = ("none", "sqrt", "completep")
# alpha of each rule: the branch multiplier is (L0 / L)^alpha
DEPTH_ALPHA: dict[DepthRule, float] = {"none": 0.0, "sqrt": 0.5, "completep": 1.0}


@dataclass(frozen=True)
class Depth:
    """A model's depth against the proxies' (``base``), and the rule between them."""

    depth: int
    base: int
    rule: DepthRule = "none"

    @property
    def ratio(self) -> float:
        return self.base / self.depth

    def branch_share(self, tau: float) -> float:
        """tau at this depth: the branch multiplier sqrt(tau) times (L0/L)^alpha."""
        return tau * self.ratio ** (2 * DEPTH_ALPHA[self.rule])

    def hidden_lr_factor(self) -> float:
        if self.rule == "none":
            return 1.0
        return self.ratio ** (1 - DEPTH_ALPHA[self.rule])


@dataclass(frozen=True)
class GroupRule:
    """What the rules say about one parameter group at one fan-in."""

    init_std: float  # weights ~ N(0, init_std^2); norm gains start at init_std (= 1)
    multiplier: float  # static factor on the layer's output
    lr: float  # peak Adam learning rate
    wd: float  # decoupled weight decay per step (times the schedule)


def init_std(group: ParamGroup, *, parametrization: Parametrization) -> float:
    if group == "norm" or parametrization == "mus":
        return 1.0
    return SP_INIT_STD


def multiplier(
    group: ParamGroup,
    *,
    parametrization: Parametrization,
    fan_in: int,
    readout_multiplier: float = 1.0,
) -> float:
    if parametrization == "sp" or group in ("embedding", "norm"):
        return 1.0
    if group == "readout":
        return readout_multiplier / math.sqrt(fan_in)
    return 1.0 / math.sqrt(fan_in)


# E[silu(z)^2] for z ~ N(0, 1), by quadrature (tests/test_swiglu.py recomputes it).
SILU_SQUARE_MEAN = 0.3557755198


def glu_multiplier(*, parametrization: Parametrization) -> float:
    """Static factor on SwiGLU's product silu(gate) * up, before the down projection.

    Under µS the gate and up outputs are unit-variance at init and independent (separate
    unit-variance weights), so E[silu(z) u] = E[silu(z)] E[u] = 0 and
    Var(silu(z) u) = E[silu(z)^2] E[u^2] = 0.35578: the product's RMS is 0.596, and
    1/sqrt(0.35578) = 1.6765 brings the down projection's input back to unit scale
    (e4m3's precision and range are centred there). SP keeps the plain product.
    """
    return 1.0 / math.sqrt(SILU_SQUARE_MEAN) if parametrization == "mus" else 1.0


def learning_rate(
    group: ParamGroup,
    *,
    parametrization: Parametrization,
    base_lr: float,
    fan_in: int,
    base_width: int,
    readout_lr: ReadoutLR = "constant",
    depth: Depth | None = None,
) -> float:
    if parametrization == "sp":
        return base_lr
    if group == "hidden":
        return (
            base_lr * math.sqrt(base_width / fan_in) * (depth.hidden_lr_factor() if depth else 1.0)
        )
    if group == "readout" and readout_lr == "sqrt":
        return base_lr * math.sqrt(base_width / fan_in)
    return base_lr


def weight_decay(group: ParamGroup, *, base_wd: float) -> float:
    return base_wd if group in ("hidden", "readout") else 0.0


def group_rule(
    group: ParamGroup,
    *,
    parametrization: Parametrization,
    fan_in: int,
    base_lr: float,
    base_wd: float,
    base_width: int,
    readout_multiplier: float = 1.0,
    readout_lr: ReadoutLR = "constant",
    depth: Depth | None = None,
) -> GroupRule:
    """Every rule for ``group`` at ``fan_in``: the one call the model and optimizer need."""
    return GroupRule(
        init_std=init_std(group, parametrization=parametrization),
        multiplier=multiplier(
            group,
            parametrization=parametrization,
            fan_in=fan_in,
            readout_multiplier=readout_multiplier,
        ),
        lr=learning_rate(
            group,
            parametrization=parametrization,
            base_lr=base_lr,
            fan_in=fan_in,
            base_width=base_width,
            readout_lr=readout_lr,
            depth=depth,
        ),
        wd=weight_decay(group, base_wd=base_wd),
    )
