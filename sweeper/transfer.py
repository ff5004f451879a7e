"""Transfer maths: from proxy results to the base LR/WD of a target width. Pure functions.

Per proxy width, the optimal base LR is read off final eval loss against log2(LR): a
parabola fitted through the lowest point and its neighbours, falling back to the argmin
when the fit is ill-posed (not convex, or its vertex outside the points it was fitted to).
WD and tau are few categorical values: their optimum is the argmin of the best loss at
each value. The drift is the slope of log2(optimum) against log2(width): under µS it should
be near 0 (the base values transfer), under SP the optimal LR falls as width grows. A sweep
at one width (an LR sweep at a target, checking a transfer) has no drift: it is refused.

The target's base value is the mean of the proxies' log2 optima weighted by width and by
the inverse variance of each optimum, so the widths closest to the target weigh most; the
width rules of `models.width_rules` then give each parameter group's actual LR and WD.

Token horizon: width transfer holds at a fixed number of training tokens, and the optimal
LR falls as training gets longer. A sweep that runs its proxies at two or more horizons
(``search.steps``) gives each horizon its own width optima; the slope of log2(optimum)
against log2(tokens), pooled over the widths (LR*(D) ∝ D^slope; Bjorck et al. 2025 fit the
same power law), carries the longest horizon's transferred value to the target's tokens.
With one horizon the transfer warns when the target trains far longer or shorter.

Depth: a sweep that runs its proxies at two or more depths (``search.depth``) gives each
depth its own width optima; the slope of log2(optimum) against log2(depth), pooled over the
widths as for tokens, is the depth drift: near 0 when the model's depth rule
(`models.width_rules.Depth`) carries the optimum, and warned about beyond the threshold.
The rule, not the fit, carries the base LR to the target's depth (the deepest proxies'
optimum is the one transferred): a fitted slope extrapolated from shallow proxies to a
deep target would carry its noise with it, as the horizon measurement showed
(docs/HORIZON.md).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from models import ModelConfig
from models.data import DataIdentity

# |drift| above this (log2 of the optimum per doubling of width) makes transfer unreliable.
DRIFT_THRESHOLD = 0.25
MIN_POINTS = 3  # finite points a width needs for a fit
FIT_NEIGHBOURS = 2  # points each side of the lowest one that the parabola sees
# Tokens of the target run over tokens of one proxy trial beyond which (either way) the
# transfer warns. Width transfer holds at a fixed token horizon; the optimal LR falls as
# training gets longer. Within a decade that shift is usually below a grid step (2x in LR);
# beyond it, it can be several, so the proxies should be swept nearer the target's horizon.
HORIZON_RATIO = 10.0
# The most training tokens a transfer targets (a quadrillion: far past any run today).
MAX_TOKENS = 10**15

Method = Literal["parabola", "argmin"]


@dataclass(frozen=True)
class TrialOutcome:
    """One finished proxy trial as the transfer sees it (loss None: diverged or no result;
    tokens: its planned training tokens, None when unknown: one horizon)."""

    width: int
    lr: float
    wd: float
    loss: float | None
    tau: float | None = None
    tokens: int | None = None
    depth: int | None = None  # the trial's blocks; None when unknown: one depth


@dataclass(frozen=True)
class Optimum:
    """An optimal base LR: its value, one standard error of log2(value), the loss there
    (fitted, for a parabola), how it was found, and the end of the searched range it lies
    at, if it does."""

    value: float
    log2_uncertainty: float  # one standard error of log2(value)
    loss: float  # best (fitted, for a parabola) loss
    method: Method
    at_edge: Literal["lower", "upper"] | None = None


@dataclass(frozen=True)
class WidthOptimum:
    width: int
    lr: Optimum
    wd: float
    tau: float | None
    finite_points: int
    curve: list[tuple[float, float]]  # (lr, loss) at the chosen wd/tau, sorted by lr


@dataclass(frozen=True)
class Drift:
    """How the optimal base LR moves: log2 of it per doubling (of width, or of tokens), and
    one standard error of that slope."""

    slope: float  # d log2(optimal base LR) / d log2(width)
    uncertainty: float


@dataclass(frozen=True)
class HorizonOptima:
    """The width optima of the proxies trained on ``tokens`` tokens each."""

    tokens: int
    widths: list[WidthOptimum]
    drift: Drift | None


@dataclass(frozen=True)
class DepthOptima:
    """The width optima of the proxies ``depth`` blocks deep (at the longest horizon)."""

    depth: int
    widths: list[WidthOptimum]
    drift: Drift | None


@dataclass(frozen=True)
class HorizonFit:
    """How the optimum moves with training tokens, and the move to the target's tokens."""

    slope: float  # d log2(optimal base LR) / d log2(tokens), pooled over the widths
    uncertainty: float
    from_tokens: int  # the longest proxy horizon: the width transfer's
    to_tokens: int
    log2_shift: float  # slope x log2(to_tokens / from_tokens): added to log2(base LR)
    log2_shift_uncertainty: float


@dataclass(frozen=True)
class GroupValues:
    group: str
    fan_in: int
    lr: float
    wd: float


@dataclass(frozen=True)
class TransferResult:
    parametrization: str
    to_width: int
    widths: list[WidthOptimum]
    drift: Drift | None
    base_lr: float
    base_wd: float
    base_tau: float | None
    extrapolated_lr: float | None  # the drift line at the target width
    groups: list[GroupValues]
    warnings: list[str] = field(default_factory=list)
    to_tokens: int | None = None  # the target's training tokens, when given
    to_depth: int | None = None  # the target's depth, when it is not the proxies'
    horizons: list[HorizonOptima] = field(default_factory=list)  # with 2+ horizons swept
    horizon: HorizonFit | None = None  # with 2+ horizons and the target's tokens
    depths: list[DepthOptima] = field(default_factory=list)  # with 2+ depths swept
    depth_drift: Drift | None = None  # log2(optimum) per doubling of depth, pooled

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_log_optimum(points: Sequence[tuple[float, float]]) -> Optimum:
    """Optimum of loss against log2(x) for (x, loss) points with finite losses, x > 0."""
    pts = sorted((math.log2(x), y) for x, y in points)
    xs = np.array([p[0] for p in pts])
    ys = np.array([p[1] for p in pts])
    best = int(np.argmin(ys))
    edge: Literal["lower", "upper"] | None = None
    if len(pts) > 1 and best == 0:
        edge = "lower"
    elif len(pts) > 1 and best == len(pts) - 1:
        edge = "upper"
    spacing = float(np.median(np.diff(xs))) if len(xs) > 1 else 1.0
    argmin = Optimum(2 ** xs[best], spacing / 2, float(ys[best]), "argmin", edge)
    lo, hi = max(0, best - FIT_NEIGHBOURS), min(len(pts), best + FIT_NEIGHBOURS + 1)
    if edge is not None or hi - lo < 3:
        return argmin
    x, y = xs[lo:hi], ys[lo:hi]
    coeffs, cov = _polyfit2(x, y)
    a, b, c = coeffs
    if a <= 0:
        return argmin
    vertex = -b / (2 * a)
    if not x[0] <= vertex <= x[-1]:
        return argmin
    # Delta method on vertex = -b / 2a; with 3 points the fit is exact and has no residual,
    # so the grid's resolution is the uncertainty.
    grad = np.array([b / (2 * a * a), -1 / (2 * a), 0.0])
    fit_sd = math.sqrt(max(float(grad @ cov @ grad), 0.0)) if cov is not None else 0.0
    uncertainty = max(fit_sd, spacing / 4) if cov is not None else spacing / 2
    loss = float(a * vertex**2 + b * vertex + c)
    return Optimum(float(2**vertex), uncertainty, loss, "parabola")


def _polyfit2(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    if len(x) > 3:
        coeffs, cov = np.polyfit(x, y, 2, cov=True)
        return coeffs, cov
    return np.polyfit(x, y, 2), None


def _best_value(outcomes: Sequence[TrialOutcome], attr: str) -> Any:
    """The value of ``attr`` (wd or tau) whose best loss is lowest."""
    best: dict[Any, float] = defaultdict(lambda: math.inf)
    for o in outcomes:
        assert o.loss is not None
        best[getattr(o, attr)] = min(best[getattr(o, attr)], o.loss)
    return min(best, key=lambda v: best[v])


def width_optimum(width: int, outcomes: Sequence[TrialOutcome]) -> WidthOptimum | None:
    """The LR optimum at one width (at its best WD and tau); None without finite points."""
    finite = [o for o in outcomes if o.loss is not None and math.isfinite(o.loss)]
    if not finite:
        return None
    wd = _best_value(finite, "wd")
    tau = _best_value(finite, "tau")
    chosen = [o for o in finite if o.wd == wd and o.tau == tau]
    best_at_lr: dict[float, float] = {}
    for o in chosen:
        assert o.loss is not None
        best_at_lr[o.lr] = min(best_at_lr.get(o.lr, math.inf), o.loss)
    curve = sorted(best_at_lr.items())
    return WidthOptimum(width, fit_log_optimum(curve), wd, tau, len(finite), curve)


def drift(optima: Sequence[WidthOptimum]) -> Drift | None:
    """Weighted least-squares slope of log2(optimum) against log2(width)."""
    if len(optima) < 2:
        return None
    x = np.array([math.log2(o.width) for o in optima])
    y = np.array([math.log2(o.lr.value) for o in optima])
    w = np.array([1 / max(o.lr.log2_uncertainty, 1e-3) ** 2 for o in optima])
    x_mean = float(np.sum(w * x) / np.sum(w))
    sxx = float(np.sum(w * (x - x_mean) ** 2))
    slope = float(np.sum(w * (x - x_mean) * y) / sxx)
    return Drift(slope, math.sqrt(1 / sxx))


def drift_line(optima: Sequence[WidthOptimum], d: Drift, width: int) -> float:
    """The optimal LR that the drift predicts at ``width``: the fitted slope through the
    widest proxy's optimum (the proxy nearest any target)."""
    widest = optima[-1]
    log2_ratio = math.log2(width) - math.log2(widest.width)
    return float(2 ** (math.log2(widest.lr.value) + d.slope * log2_ratio))


def drift_warning(d: Drift, axis: Literal["width", "depth"] = "width") -> str | None:
    """A drift beyond the threshold by two standard errors makes transfer unreliable; one
    that the proxies cannot tell from that (beyond it, but within the noise, or too noisy
    to say) asks for a finer sweep rather than condemning the setup."""
    measured = (
        f"{d.slope:+.2f} ± {d.uncertainty:.2f} log2 per doubling of {axis}"
        f" (threshold ±{DRIFT_THRESHOLD})"
    )
    if abs(d.slope) - 2 * d.uncertainty > DRIFT_THRESHOLD:
        remedy = "" if axis == "width" else " (model.depth_rule sets how depth is carried)"
        return (
            f"the optimal LR drifts by {measured}: transfer across {axis} is not reliable for"
            f" this setup{remedy}"
        )
    if abs(d.slope) > DRIFT_THRESHOLD or d.uncertainty > DRIFT_THRESHOLD:
        return (
            f"the drift of the optimal LR is uncertain, {measured}: sweep more LR points or"
            f" more {axis}s before trusting the transfer"
        )
    return None


def pooled_slope(slices: Iterable[tuple[float, Sequence[WidthOptimum]]]) -> Drift | None:
    """Weighted least-squares slope of log2(optimum) against log2(at) for the width optima
    at each ``at`` (a horizon's tokens, a depth), one slope for every width (each width
    centred on its own mean: widths differ in their optimum, not in how it moves); None
    unless some width was fitted at two or more values of ``at``."""
    by_width: dict[int, list[tuple[float, float, float]]] = defaultdict(list)
    for at, optima in slices:
        for o in optima:
            weight = 1 / max(o.lr.log2_uncertainty, 1e-3) ** 2
            by_width[o.width].append((math.log2(at), math.log2(o.lr.value), weight))
    sxx = sxy = 0.0
    for points in by_width.values():
        if len(points) < 2:
            continue
        x, y, w = (np.array(column) for column in zip(*points, strict=True))
        x_mean, y_mean = np.sum(w * x) / np.sum(w), np.sum(w * y) / np.sum(w)
        sxx += float(np.sum(w * (x - x_mean) ** 2))
        sxy += float(np.sum(w * (x - x_mean) * (y - y_mean)))
    if sxx == 0:
        return None
    return Drift(sxy / sxx, math.sqrt(1 / sxx))


def _width_optima(
    outcomes: Iterable[TrialOutcome], warnings: list[str], where: str
) -> list[WidthOptimum]:
    """Every width's fit, with a warning (prefixed by ``where``) for each weak one."""
    by_width: dict[int, list[TrialOutcome]] = defaultdict(list)
    for o in outcomes:
        by_width[o.width].append(o)
    optima: list[WidthOptimum] = []
    for width in sorted(by_width):
        fit = width_optimum(width, by_width[width])
        if fit is None:
            warnings.append(
                f"{where}width {width}: no finite result (every trial diverged or failed)"
            )
            continue
        if fit.finite_points < MIN_POINTS:
            warnings.append(
                f"{where}width {width}: only {fit.finite_points} finite points (need"
                f" {MIN_POINTS}); its optimum is a plain argmin"
            )
        if fit.lr.at_edge:
            direction = "upward" if fit.lr.at_edge == "upper" else "downward"
            warnings.append(
                f"{where}width {width}: the best LR {fit.lr.value:.4g} is at the"
                f" {fit.lr.at_edge} edge of the searched range: extend the range {direction}"
            )
        optima.append(fit)
    if len(by_width) < 2 and optima:
        raise ValueError(
            f"every finished trial is at width {optima[0].width}: a transfer needs proxies at"
            " two or more widths"
        )
    return optima


def _grouped(
    outcomes: Iterable[TrialOutcome], attr: Literal["tokens", "depth"]
) -> dict[int | None, list[TrialOutcome]]:
    groups: dict[int | None, list[TrialOutcome]] = defaultdict(list)
    for o in outcomes:
        groups[getattr(o, attr)].append(o)
    return dict(sorted(groups.items(), key=lambda item: item[0] or 0))


def by_horizon(outcomes: Iterable[TrialOutcome]) -> dict[int | None, list[TrialOutcome]]:
    """The outcomes of each token horizon, shortest first (None: unknown, one horizon)."""
    return _grouped(outcomes, "tokens")


def by_depth(outcomes: Iterable[TrialOutcome]) -> dict[int | None, list[TrialOutcome]]:
    """The outcomes of each depth, shallowest first (None: unknown, one depth)."""
    return _grouped(outcomes, "depth")


def transferred_slice(outcomes: Iterable[TrialOutcome]) -> list[TrialOutcome]:
    """The outcomes at the deepest depth and the longest horizon swept: the ones the width
    transfer fits (and whose LR curves a comparison draws)."""
    depths = by_depth(outcomes)
    if not depths:
        return []
    horizons = by_horizon(depths[list(depths)[-1]])
    return horizons[list(horizons)[-1]]


def horizon_warning(proxy_tokens: int, target_tokens: int) -> str | None:
    """A target far from the one horizon the proxies were swept at (HORIZON_RATIO)."""
    ratio = target_tokens / proxy_tokens
    if 1 / HORIZON_RATIO <= ratio <= HORIZON_RATIO:
        return None
    return (
        f"the target trains on {target_tokens:,} tokens, {ratio:.3g}x the {proxy_tokens:,}"
        f" of a proxy trial: the optimal LR moves with the token horizon (beyond"
        f" {HORIZON_RATIO:g}x either way), so sweep proxies nearer the target's or at two"
        " or more horizons (search.steps)"
    )


def compute_transfer(
    outcomes: Iterable[TrialOutcome],
    *,
    model: ModelConfig,
    to_width: int,
    to_tokens: int | None = None,
    to_depth: int | None = None,
) -> TransferResult:
    """Fit every proxy width at every horizon and depth, measure the drifts and derive the
    target's per-group values (at ``to_tokens`` when given and two or more horizons were
    swept; at ``to_depth`` through the model's depth rule)."""
    depth_groups = by_depth(outcomes)
    if not depth_groups:
        raise ValueError("no width has a finite result: nothing to transfer")
    deepest = list(depth_groups)[-1]
    warnings: list[str] = []
    depths: list[DepthOptima] = []  # each shallower depth's, at its longest horizon
    for depth, at_depth in list(depth_groups.items())[:-1]:
        assert depth is not None  # trial_outcomes gives every outcome its depth
        fits = _width_optima(transferred_slice(at_depth), warnings, f"depth {depth}: ")
        depths.append(DepthOptima(depth, fits, drift(fits)))
    groups = by_horizon(depth_groups[deepest])
    longest = list(groups)[-1]
    horizons: list[HorizonOptima] = []
    if len(groups) > 1:  # each horizon's optima, its warnings named by its tokens
        for tokens, at_tokens in groups.items():
            assert tokens is not None  # trial_outcomes gives every outcome its tokens
            fits = _width_optima(at_tokens, warnings, f"{tokens:,} tokens: ")
            horizons.append(HorizonOptima(tokens, fits, drift(fits)))
        optima = horizons[-1].widths
    else:
        optima = _width_optima(groups[longest], warnings, "")
    if not optima:
        raise ValueError("no width has a finite result: nothing to transfer")

    slope = drift(optima)
    if slope is not None and (warning := drift_warning(slope)):
        warnings.append(warning)
    depth_drift = None
    if depths:
        assert deepest is not None
        depths.append(DepthOptima(deepest, optima, slope))
        depth_drift = pooled_slope((d.depth, d.widths) for d in depths)
        if depth_drift is not None and (warning := drift_warning(depth_drift, "depth")):
            warnings.append(warning)
    weights = [o.width / max(o.lr.log2_uncertainty, 1e-3) ** 2 for o in optima]
    log2_lr = sum(w * math.log2(o.lr.value) for w, o in zip(weights, optima, strict=True))
    base_lr = 2 ** (log2_lr / sum(weights))
    horizon = None
    tokens_slope = pooled_slope((h.tokens, h.widths) for h in horizons)
    if to_tokens is not None and longest is not None:
        if tokens_slope is not None:
            log2_ratio = math.log2(to_tokens / longest)
            horizon = HorizonFit(
                slope=tokens_slope.slope,
                uncertainty=tokens_slope.uncertainty,
                from_tokens=longest,
                to_tokens=to_tokens,
                log2_shift=tokens_slope.slope * log2_ratio,
                log2_shift_uncertainty=tokens_slope.uncertainty * abs(log2_ratio),
            )
            base_lr *= 2**horizon.log2_shift
        elif warning := horizon_warning(longest, to_tokens):
            warnings.append(warning)
    extrapolated = drift_line(optima, slope, to_width) if slope is not None else None
    widest = optima[-1]  # WD and tau: the choice at the widest proxy
    target = model.model_copy(update={"width": to_width, "depth": to_depth or model.depth})
    proxy_depth = deepest or model.depth
    if target.depth != proxy_depth and model.depth_rule == "none":
        warnings.append(
            f"the proxies are {proxy_depth} blocks deep and the target {target.depth}, with no"
            " depth rule: the optimum may move with depth (model.depth_rule: completep or"
            " sqrt carries it)"
        )
    values = []
    for group, fan_in in target.parameter_groups():
        rule = target.group_rule(group, fan_in, base_lr=base_lr, base_wd=widest.wd)
        values.append(GroupValues(group=group, fan_in=fan_in, lr=rule.lr, wd=rule.wd))
    return TransferResult(
        parametrization=model.parametrization,
        to_width=to_width,
        widths=optima,
        drift=slope,
        base_lr=base_lr,
        base_wd=widest.wd,
        base_tau=widest.tau,
        extrapolated_lr=extrapolated,
        groups=values,
        warnings=warnings,
        to_tokens=to_tokens,
        to_depth=to_depth,
        horizons=horizons,
        horizon=horizon,
        depths=depths,
        depth_drift=depth_drift,
    )


def _tokenizer_text(data: DataIdentity) -> str:
    digest = f" {data.tokenizer_sha256[:12]}" if data.tokenizer_sha256 else ""
    return f"{data.tokenizer}{digest} (vocabulary {data.vocab_size})"


def data_warnings(proxies: DataIdentity | None, target: DataIdentity) -> list[str]:
    """Why the proxies' optimum may not be the target's: another tokenizer, or other data
    (content, not path). ``proxies`` is None for a sweep stored before data identities
    were: nothing is compared then. (The token horizon is the transfer's own check.)"""
    if proxies is None:
        return []
    tokenizer = (proxies.tokenizer, proxies.tokenizer_sha256, proxies.vocab_size)
    if tokenizer != (target.tokenizer, target.tokenizer_sha256, target.vocab_size):
        return [
            f"the proxies used tokenizer {_tokenizer_text(proxies)}, the target"
            f" {_tokenizer_text(target)}: the optimum was found for another tokenizer"
        ]
    if proxies.sha256 != target.sha256:
        return [
            f"the proxies trained on {proxies.source} (sha256 {proxies.sha256[:12]}), the"
            f" target on {target.source} (sha256 {target.sha256[:12]}): the optimum"
            " carries over only if the two are samples of one distribution"
        ]
    return []
