"""docs/DEPTH.md and its picture, from the depth measurement: for each depth rule, proxies at
two depths, a check sweep at the target's depth, and the transfer between them.

The measurement (issue 20, depth): µS FP8 proxies at widths 128 and 256 and depths 2 and 4
(`examples/depth_sweep.yaml`), an LR sweep at width 256 and depth 12
(`examples/depth_check.yaml`), for each of ``model.depth_rule`` completep, sqrt and none
(`benchmarks/depth_transfer.sh` writes the rule into both specs). On a GPU machine:

    SWEEPER_DB_URL=sqlite:///benchmarks/results/depth/depth.db \\
        bash benchmarks/depth_transfer.sh completep sqrt
    SWEEPER_DB_URL=sqlite:///benchmarks/results/depth/depth_none.db \\
        bash benchmarks/depth_transfer.sh none

then anywhere (the transfers need no GPU), with each rule's proxies' sweep id:

    sweeper transfer --sweep ID --to-width 256 --to-depth 12 --json \\
        > benchmarks/results/depth/transfer_RULE.json
    python -m benchmarks.depth_report
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
from sweeper import service
from sweeper.transfer import WidthOptimum, by_depth

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "depth"
RULES = {  # each rule's database; in it the proxies are one sweep and their check the next
    "completep": "depth.db",
    "sqrt": "depth.db",
    "none": "depth_none.db",
}


@dataclass
class RuleMeasurement:
    rule: str
    proxies: dict[int, list[WidthOptimum]]  # each proxy depth's width optima
    check: WidthOptimum
    check_depth: int
    transfer: dict[str, Any]  # the stored `sweeper transfer --to-depth` result


def load(results: Path, rule: str) -> RuleMeasurement:
    database = db.connect(f"sqlite:///{results / RULES[rule]}")
    transfer = json.loads((results / f"transfer_{rule}.json").read_text())
    proxies_id = transfer["sweep_id"]
    spec = service.sweep_progress(database, proxies_id + 1).spec
    assert spec.train.model.depth_rule == rule, f"sweep {proxies_id + 1} is not {rule}'s check"
    proxies = {
        depth: width_optima(trials)
        for depth, trials in by_depth(outcomes(database, proxies_id)).items()
        if depth is not None
    }
    [check] = width_optima(outcomes(database, proxies_id + 1))
    return RuleMeasurement(rule, proxies, check, spec.train.model.depth, transfer["result"])


def plot(measured: list[RuleMeasurement], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(measured), figsize=(4.2 * len(measured), 4), sharey=True)
    for ax, m in zip(axes, measured, strict=True):
        curves = [
            (f"depth {depth} (proxies)", next(f for f in fits if f.width == m.check.width))
            for depth, fits in m.proxies.items()
        ]
        curves.append((f"depth {m.check_depth} (check)", m.check))
        for (label, fit), shade in zip(curves, ["#a1d99b", "#41ab5d", "#00441b"], strict=True):
            ax.plot([math.log2(lr) for lr, _ in fit.curve], [loss for _, loss in fit.curve],
                    "o-", color=shade, label=label)  # fmt: skip
            ax.axvline(math.log2(fit.lr.value), color=shade, ls=":")
        moved = math.log2(m.transfer["base_lr"])
        ax.plot([moved], [loss_at(m.check, moved)], "r*", ms=14, label="transferred")
        ax.set_title(f"depth_rule: {m.rule}")
        ax.set_xlabel("log2 base LR")
    axes[0].set_ylabel(f"final eval loss, width {measured[0].check.width}")
    axes[0].legend()
    fig.suptitle("µS FP8: the LR optimum across depth under each rule")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def row(m: RuleMeasurement) -> str:
    drift = m.transfer["depth_drift"]
    transferred = math.log2(m.transfer["base_lr"])
    best = math.log2(m.check.lr.value)
    at_width = [
        f"2^{math.log2(next(f for f in fits if f.width == m.check.width).lr.value):.2f}"
        for fits in m.proxies.values()
    ]
    return (
        f"| `{m.rule}` | {' / '.join(at_width)}"
        f" | {drift['slope']:+.2f} ± {drift['uncertainty']:.2f}"
        f" | 2^{transferred:.2f} | 2^{best:.2f} | {transferred - best:+.2f}"
        f" | {loss_gap(m.check, transferred):+.2%} | {best_loss(m.check):.4f} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args(argv)
    measured = [load(args.results, rule) for rule in RULES]
    (args.out / "experiments").mkdir(parents=True, exist_ok=True)
    plot(measured, args.out / "experiments" / "depth.png")
    first = measured[0]
    depths = " and ".join(str(d) for d in first.proxies)
    widths = ", ".join(str(f.width) for f in next(iter(first.proxies.values())))
    header = (
        f"| rule | optimum at width {first.check.width}, depth"
        f" {' / '.join(str(d) for d in first.proxies)} | depth drift | transferred"
        " | check's optimum | log2 off | loss gap | check's best loss |"
    )
    text = f"""# Transfer across depth: a measurement

Generated by `python -m benchmarks.depth_report` from `benchmarks/results/depth/` (the
commands are in its docstring); rerun it rather than editing by hand. One NVIDIA H200,
torch 2.11, triton 3.6, µS FP8 (the Triton kernels), head_dim 64, seq 128, 4096 tokens per
step, 500 steps, shakespeare, WD 0.001, LR 2^-8 .. 2^-2 in 7 points. Proxies at widths
{widths} and depths {depths}; the check is an LR sweep at width {first.check.width} and depth
{first.check_depth}, so the transfer it checks is across depth alone. `base_depth` is 2: the
model's τ holds at depth 2, and `completep` and `sqrt` scale it (`sqrt` the hidden LR too)
from there (`models/width_rules.py`, `Depth`); `none` keeps both at every depth.

Depth drift: log2 of the optimal base LR per doubling of depth, pooled over the widths. The
transferred LR is the deepest proxies' optimum carried by the rule; the loss gap is the
check's loss there against its best, both on the curve through its measured points.

{header}
|---|---|---|---|---|---|---|---|
{chr(10).join(row(m) for m in measured)}

![each rule's LR curves at the proxies' depths and the target's](experiments/depth.png)
"""
    (args.out / "DEPTH.md").write_text(text)
    print(f"wrote {args.out / 'DEPTH.md'}")


if __name__ == "__main__":
    main()
