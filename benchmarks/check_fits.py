"""What the transfer measurements read off their recorded sweeps: each slice's width optima,
and a check sweep's loss at the LR a transfer gave (`benchmarks.horizon_report`,
`benchmarks.depth_report`)."""

from __future__ import annotations

import math

import numpy as np

import db
from sweeper import service
from sweeper.compare import trial_outcomes
from sweeper.transfer import TrialOutcome, WidthOptimum, width_optimum


def outcomes(database: db.Database, sweep_id: int) -> list[TrialOutcome]:
    progress = service.sweep_progress(database, sweep_id)
    return trial_outcomes(progress.trials, progress.spec)


def width_optima(trials: list[TrialOutcome]) -> list[WidthOptimum]:
    """The optimum of each width among ``trials`` (one slice: one horizon, one depth)."""
    return [
        fit
        for w in sorted({o.width for o in trials})
        if (fit := width_optimum(w, [o for o in trials if o.width == w])) is not None
    ]


def loss_at(check: WidthOptimum, log2_lr: float) -> float:
    """The check's loss at ``log2_lr`` (the LRs a transfer gives fall between the grid's):
    between two measured LRs, the parabolas through each one's neighbourhood (it and its two
    neighbours) blended by position, so the curve passes through every measurement and has
    no jump where the nearest three points change; beyond the ends, the end parabola."""
    x = np.log2([lr for lr, _ in check.curve])
    y = np.array([loss for _, loss in check.curve])

    def parabola(centre: int) -> float:  # through points centre-1 .. centre+1, clamped
        i = min(max(centre, 1), len(x) - 2)
        return float(np.polyval(np.polyfit(x[i - 1 : i + 2], y[i - 1 : i + 2], 2), log2_lr))

    right = int(np.clip(np.searchsorted(x, log2_lr), 1, len(x) - 1))
    t = float(np.clip((log2_lr - x[right - 1]) / (x[right] - x[right - 1]), 0.0, 1.0))
    return (1 - t) * parabola(right - 1) + t * parabola(right)


def best_loss(check: WidthOptimum) -> float:
    """The lowest loss on the curve `loss_at` interpolates: what the check's best LR gives."""
    x = [math.log2(lr) for lr, _ in check.curve]
    return min(loss_at(check, v) for v in np.linspace(min(x), max(x), 201))


def loss_gap(check: WidthOptimum, log2_lr: float) -> float:
    """How much worse the check trains at ``log2_lr`` than at its best, both read off the
    same interpolated curve (the optimum's fitted loss comes from a parabola through the
    whole curve, which a steep side can pull below every measured point)."""
    return loss_at(check, log2_lr) / best_loss(check) - 1
