"""docs/HORIZON.md and its pictures, from the horizon measurements: each a horizon sweep, its
check sweep and their transfers.

A measurement (issue 20, horizon): µS FP8 proxies swept at two token horizons a factor 4
apart, an LR sweep at one proxy width for 4x the longest horizon, and the transfer to that
width at the check's tokens, with and without the horizon fit. Two were run, each in its own
folder of `benchmarks/results/` (its database holds the proxies as sweep 1, the check as 2):

- ``horizon``: `examples/horizon_sweep.yaml` (125 and 500 steps, widths 128-512) and
  `examples/horizon_check.yaml` (width 512, 2000 steps);
- ``horizon_long``: `examples/horizon_sweep_long.yaml` (500 and 2000 steps, widths 128 and
  256) and `examples/horizon_check_long.yaml` (width 256, 8000 steps).

On a GPU machine, for each (here ``horizon``, checked at width 512 and 8.192M tokens):

    export SWEEPER_DB_URL=sqlite:///benchmarks/results/horizon/horizon.db
    sweeper sweep start examples/horizon_sweep.yaml --wait
    sweeper sweep start examples/horizon_check.yaml --wait

then anywhere (the transfers need no GPU):

    sweeper transfer --sweep 1 --to-width 512 --to-tokens 8192000 --json \
        > benchmarks/results/horizon/transfer_to_tokens.json
    sweeper transfer --sweep 1 --to-width 512 --json > .../transfer_longest.json
    python -m benchmarks.horizon_report
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import db
from benchmarks.check_fits import best_loss, loss_at, loss_gap, outcomes, width_optima
from sweeper.transfer import WidthOptimum, by_horizon

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
MEASUREMENTS = ("horizon", "horizon_long")


@dataclass
class Measurement:
    name: str
    proxies: dict[int, list[WidthOptimum]]  # each horizon's (tokens') width optima
    check: WidthOptimum
    check_tokens: int
    transfers: dict[str, dict[str, Any]]  # "to_tokens" (the fit) and "longest" (not moved)


def load(results: Path) -> Measurement:
    database = db.connect(f"sqlite:///{results / results.name}.db")
    proxies = {
        tokens: width_optima(trials)
        for tokens, trials in by_horizon(outcomes(database, 1)).items()
        if tokens is not None
    }
    [check] = width_optima(check_trials := outcomes(database, 2))
    assert check_trials[0].tokens is not None
    transfers = {
        name: json.loads((results / f"transfer_{name}.json").read_text())["result"]
        for name in ("to_tokens", "longest")
    }
    return Measurement(results.name, proxies, check, check_trials[0].tokens, transfers)


def plot(m: Measurement, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    curves = [
        (f"{tokens / 1e6:g}M tokens (proxies)", next(f for f in fits if f.width == m.check.width))
        for tokens, fits in m.proxies.items()
    ]
    curves.append((f"{m.check_tokens / 1e6:g}M tokens (check)", m.check))
    for (label, fit), shade in zip(curves, ["#9ecae1", "#4292c6", "#08306b"], strict=True):
        ax.plot([math.log2(lr) for lr, _ in fit.curve], [loss for _, loss in fit.curve], "o-",
                color=shade, label=label)  # fmt: skip
        ax.axvline(math.log2(fit.lr.value), color=shade, ls=":")
    moved = math.log2(m.transfers["to_tokens"]["base_lr"])
    ax.plot([moved], [loss_at(m.check, moved)], "r*", ms=14, label="moved by the horizon fit")
    ax.set_xlabel("log2 base LR")
    ax.set_ylabel("final eval loss")
    ax.set_title(f"µS FP8, width {m.check.width}: the optimum at three horizons")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def section(m: Measurement) -> str:
    best = math.log2(m.check.lr.value)
    rows = []
    for name, what in (
        ("longest", "the longest horizon's optimum, not moved"),
        ("to_tokens", "moved by the horizon fit"),
    ):
        log2_lr = math.log2(m.transfers[name]["base_lr"])
        gap = loss_gap(m.check, log2_lr)
        rows.append(f"| {what} | 2^{log2_lr:.2f} | {log2_lr - best:+.2f} | {gap:+.2%} |")
    horizons = m.transfers["to_tokens"]["horizons"]
    optima_rows = [
        f"| {tokens / 1e6:g}M | {' | '.join(f'2^{math.log2(f.lr.value):.2f}' for f in fits)} |"
        f" {h['drift']['slope']:+.2f} ± {h['drift']['uncertainty']:.2f} |"
        for (tokens, fits), h in zip(m.proxies.items(), horizons, strict=True)
    ]
    widths = [f.width for f in next(iter(m.proxies.values()))]
    at_check_width = [
        f"2^{math.log2(f.lr.value):.2f} at {tokens / 1e6:g}M"
        for tokens, fits in m.proxies.items()
        for f in fits
        if f.width == m.check.width
    ]
    horizon = m.transfers["to_tokens"]["horizon"]
    slope = f"{horizon['slope']:+.2f} ± {horizon['uncertainty']:.2f}"
    spans = " and ".join(f"{tokens / 1e6:g}M" for tokens in m.proxies)
    return f"""## `{m.name}`: proxies at {spans} tokens, checked at {m.check_tokens / 1e6:g}M

Each horizon's optimum (base LR) by width, and its width drift:

| tokens per proxy | {" | ".join(f"width {w}" for w in widths)} | drift per doubling of width |
|---|{"---|" * len(widths)}---|
{chr(10).join(optima_rows)}

The horizon fit, pooled over the widths: LR* ∝ D^({slope}).

Carried to {m.check_tokens / 1e6:g}M tokens, against an LR sweep there at width
{m.check.width}: the check's own optimum is 2^{best:.2f} ± {m.check.lr.log2_uncertainty:.2f}
(best loss on its curve {best_loss(m.check):.4f}); the proxies' at that width were
{", ".join(at_check_width)}.

| transferred base LR | value | log2 from the check's | loss gap on the check's curve |
|---|---|---|---|
{chr(10).join(rows)}

![the LR curves at three horizons](experiments/{m.name}.png)
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args(argv)
    (args.out / "experiments").mkdir(parents=True, exist_ok=True)
    measurements = [load(args.results / name) for name in MEASUREMENTS]
    for m in measurements:
        plot(m, args.out / "experiments" / f"{m.name}.png")
    text = f"""# Transfer across the token horizon: two measurements

Generated by `python -m benchmarks.horizon_report` from `benchmarks/results/horizon*/` (the
commands are in its docstring); rerun it rather than editing by hand. One NVIDIA H200,
torch 2.11, triton 3.6, µS FP8 (the Triton kernels), depth 4, seq 128, 4096 tokens per step,
shakespeare, WD 0.001, LR 2^-8 .. 2^-2 in 7 points, cosine schedule with 10% warm-up. Loss
gaps compare the check's loss at the transferred LR with its best loss, both on the curve
through its measured points (between two measured LRs, their neighbourhoods' parabolas blended).

{chr(10).join(section(m) for m in measurements)}"""
    (args.out / "HORIZON.md").write_text(text)
    print(f"wrote {args.out / 'HORIZON.md'}")


if __name__ == "__main__":
    main()
