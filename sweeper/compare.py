"""Sweeps side by side: the read model of the comparison view (`GET /compare`).

For each sweep: each width's LR curve (final eval loss against the base LR, at that width's
best WD and τ) with its fitted optimum, the drift of those optima and its line carried out
to every width the sweep was transferred to, and those transfers. A sweep at one width, such
as the LR sweep that checks a transfer at its target, has a curve and an optimum but no
drift: a view sets its optimum beside the values transferred to that width.

The fits are `sweeper.transfer`'s, on the trials a transfer sees, so the view shows exactly
what a transfer computes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import db
from sweeper.spec import SweepSpec
from sweeper.transfer import (
    TrialOutcome,
    drift,
    drift_line,
    transferred_slice,
    width_optimum,
)
from sweeper.views import LinePoint, LrCurve, SweepComparison, TransferMark


def trial_outcomes(trials: Iterable[db.Trial], spec: SweepSpec) -> list[TrialOutcome]:
    """The trials a transfer fits (the service's transfer and the views alike): completed
    ones with their loss, diverged ones as points without one, each with the tokens it
    was planned to train on and its depth (its own ``steps`` and ``depth`` where the sweep
    varies them)."""
    base = spec.train
    return [
        TrialOutcome(
            width=t.width,
            lr=t.params["lr"],
            wd=t.params["wd"],
            tau=t.params.get("tau"),
            # Pruned trials stopped early and would bias the curve; unfinished ones have none.
            loss=t.final_eval_loss if t.status is db.TrialStatus.COMPLETED else None,
            tokens=int(t.params.get("steps", base.steps)) * base.tokens_per_step,
            depth=int(t.params.get("depth", base.model.depth)),
        )
        for t in trials
        if t.status in (db.TrialStatus.COMPLETED, db.TrialStatus.DIVERGED) and "lr" in t.params
    ]


def compare_sweep(
    sweep: db.Sweep,
    spec: SweepSpec,
    trials: Sequence[db.Trial],
    transfers: Sequence[db.Transfer],
) -> SweepComparison:
    """One sweep's part of a comparison (``transfers`` newest first, as db lists them)."""
    by_width: dict[int, list[TrialOutcome]] = defaultdict(list)
    for outcome in transferred_slice(trial_outcomes(trials, spec)):
        by_width[outcome.width].append(outcome)
    optima = [fit for width in sorted(by_width) if (fit := width_optimum(width, by_width[width]))]
    latest: dict[int, TransferMark] = {}
    for t in transfers:
        latest.setdefault(
            t.to_width,
            TransferMark(
                transfer_id=t.id,
                to_width=t.to_width,
                base_lr=t.result["base_lr"],
                extrapolated_lr=t.result.get("extrapolated_lr"),
            ),
        )
    marks = [latest[w] for w in sorted(latest)]
    slope = drift(optima)
    line: list[LinePoint] = []
    if slope is not None:
        ends = {optima[0].width, optima[-1].width} | {m.to_width for m in marks}
        line = [LinePoint(width=w, lr=drift_line(optima, slope, w)) for w in sorted(ends)]
    curves = []
    for fit in optima:
        best_lr, best_loss = min(fit.curve, key=lambda point: point[1])
        curves.append(
            LrCurve(
                width=fit.width,
                wd=fit.wd,
                tau=fit.tau,
                lr=[lr for lr, _ in fit.curve],
                loss=[loss for _, loss in fit.curve],
                optimum=fit.lr,
                best_lr=best_lr,
                best_loss=best_loss,
            )
        )
    return SweepComparison(
        sweep_id=sweep.id,
        name=sweep.name,
        status=sweep.status,
        parametrization=spec.train.model.parametrization,
        precision=spec.train.precision,
        widths=spec.widths,
        curves=curves,
        drift=slope,
        drift_line=line,
        transfers=marks,
    )
