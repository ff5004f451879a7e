"""docs/HORIZON.md and its picture, from a horizon sweep, its check sweep and their transfers.

The measurement (issue 20, horizon): µS FP8 proxies at widths 128-512 swept at two token
horizons a factor 4 apart (`examples/horizon_sweep.yaml`), an LR sweep at width 512 for 4x
the longest horizon (`examples/horizon_check.yaml`), and the transfer to that width at the
check's tokens, with and without the horizon fit. On a GPU machine:

    export SWEEPER_DB_URL=sqlite:///benchmarks/results/horizon/horizon.db
    sweeper sweep start examples/horizon_sweep.yaml --wait --json > .../horizon_sweep.json
    sweeper sweep start examples/horizon_check.yaml --wait --json > .../horizon_check.json
    sweeper transfer --sweep 1 --to-width 512 --to-tokens 8192000 --json \
        > .../transfer_to_tokens.json
    sweeper transfer --sweep 1 --to-width 512 --json > .../transfer_longest.json

then anywhere: ``python -m benchmarks.horizon_report``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

import db
from sweeper import service
from sweeper.compare import trial_outcomes
from sweeper.transfer import WidthOptimum, by_horizon, width_optimum

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "horizon"


def optima(database: db.Database, sweep_id: int) -> dict[int, list[WidthOptimum]]:
    """Each horizon's (tokens') width optima of a recorded sweep."""
    progress = service.sweep_progress(database, sweep_id)
    fits: dict[int, list[WidthOptimum]] = {}
    for tokens, outcomes in by_horizon(trial_outcomes(progress.trials, progress.spec)).items():
        assert tokens is not None
        widths = sorted({o.width for o in outcomes})
        fits[tokens] = [
            fit
            for w in widths
            if (fit := width_optimum(w, [o for o in outcomes if o.width == w])) is not None
        ]
    return fits


def loss_at(fit: WidthOptimum, log2_lr: float) -> float:
    """The check's loss at ``log2_lr``, read off the parabola through its three points
    nearest it (the LRs a transfer gives fall between the grid's)."""
    nearest = sorted(fit.curve, key=lambda p: abs(math.log2(p[0]) - log2_lr))[:3]
    x, y = zip(*((math.log2(lr), loss) for lr, loss in nearest), strict=True)
    return float(np.polyval(np.polyfit(x, y, 2), log2_lr))


def plot(
    proxies: dict[int, list[WidthOptimum]], check: WidthOptimum, check_tokens: int, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    at_512 = {
        tokens: next(f for f in fits if f.width == check.width) for tokens, fits in proxies.items()
    }
    for (tokens, fit), shade in zip(
        [*at_512.items(), (None, check)], ["#9ecae1", "#4292c6", "#08306b"], strict=True
    ):
        label = (
            f"{tokens / 1e6:g}M tokens (proxies)"
            if tokens
            else f"{check_tokens / 1e6:g}M tokens (check)"
        )
        xs = [math.log2(lr) for lr, _ in fit.curve]
        ax.plot(xs, [loss for _, loss in fit.curve], "o-", color=shade, label=label)
        ax.axvline(math.log2(fit.lr.value), color=shade, ls=":")
    ax.set_xlabel("log2 base LR")
    ax.set_ylabel("final eval loss")
    ax.set_title(f"µS FP8, width {check.width}: the optimum at three horizons")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args(argv)
    database = db.connect(f"sqlite:///{args.results / 'horizon.db'}")
    proxies = optima(database, 1)
    [(check_tokens, [check])] = optima(database, 2).items()
    transfers: dict[str, Any] = {
        name: json.loads((args.results / f"transfer_{name}.json").read_text())["result"]
        for name in ("to_tokens", "longest")
    }
    horizon = transfers["to_tokens"]["horizon"]
    (args.out / "experiments").mkdir(parents=True, exist_ok=True)
    plot(proxies, check, check_tokens, args.out / "experiments" / "horizon.png")

    best = math.log2(check.lr.value)
    rows = []
    for name, what in (
        ("longest", "the longest horizon's optimum, not moved"),
        ("to_tokens", "moved by the horizon fit"),
    ):
        log2_lr = math.log2(transfers[name]["base_lr"])
        gap = loss_at(check, log2_lr) / check.lr.loss - 1
        rows.append(f"| {what} | 2^{log2_lr:.2f} | {log2_lr - best:+.2f} | {gap:+.2%} |")
    optima_rows = [
        f"| {tokens / 1e6:g}M | {' | '.join(f'2^{math.log2(f.lr.value):.2f}' for f in fits)} |"
        f" {d['slope']:+.2f} ± {d['uncertainty']:.2f} |"
        for (tokens, fits), d in zip(
            proxies.items(), [h["drift"] for h in transfers["to_tokens"]["horizons"]], strict=True
        )
    ]
    widths = [f.width for f in next(iter(proxies.values()))]
    at_check_width = [
        f"2^{math.log2(f.lr.value):.2f} at {tokens / 1e6:g}M"
        for tokens, fits in proxies.items()
        for f in fits
        if f.width == check.width
    ]
    slope = f"{horizon['slope']:+.2f} ± {horizon['uncertainty']:.2f}"
    text = f"""# Transfer across the token horizon: a measurement

Generated by `python -m benchmarks.horizon_report` from `benchmarks/results/horizon/` (the
commands are in its docstring); rerun it rather than editing by hand. One NVIDIA H200,
torch 2.11, triton 3.6, µS FP8 (the Triton kernels), depth 4, seq 128, 4096 tokens per step,
shakespeare, WD 0.001, LR 2^-8 .. 2^-2 in 7 points, cosine schedule with 10% warm-up.

## Each horizon's optimum (base LR) by width, and its width drift

| tokens per proxy | {" | ".join(f"width {w}" for w in widths)} | drift per doubling of width |
|---|{"---|" * len(widths)}---|
{chr(10).join(optima_rows)}

The horizon fit, pooled over the widths: LR* ∝ D^({slope}).

## Carried to 4x the longest horizon, against an LR sweep there (width {check.width})

The check's own optimum: 2^{best:.2f} ± {check.lr.log2_uncertainty:.2f}, loss
{check.lr.loss:.4f}. At width {check.width} the proxies' optima were
{", ".join(at_check_width)}.

| transferred base LR | value | log2 from the check's | loss gap (parabola through the check) |
|---|---|---|---|
{chr(10).join(rows)}

![the LR curves at three horizons](experiments/horizon.png)
"""
    (args.out / "HORIZON.md").write_text(text)
    print(f"wrote {args.out / 'HORIZON.md'}")


if __name__ == "__main__":
    main()
