"""Where a proxy sweep's wall time goes, from the timelines `benchmarks.proxy_speed sweep`
records: a picture of every trial against the GPU's utilisation, and the split of the wall.

Each trial is a bar from its start by Tune to its end: its worker's start and Tune's
bookkeeping (light), the run's startup (graph capture, loading kernels; middle) and its
training and evaluation (dark). The split says, of each sweep's wall time, how long no
trial had started yet (the kernel warm-up, Ray's start), how long trials were up but none
was training, and how long one or more trained.

    python -m benchmarks.sweep_timeline [--results benchmarks/results/proxy_speed_sweep.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "proxy_speed_sweep.json"
PICTURE = REPO / "docs" / "experiments" / "proxy_sweep_timeline.png"


def _covered(spans: list[tuple[float, float]]) -> float:
    """Seconds inside at least one of ``spans``."""
    total, reach = 0.0, float("-inf")
    for begin, end in sorted(spans):
        if end > reach:
            total += end - max(begin, reach)
            reach = end
    return total


def split(sweep: dict[str, Any]) -> dict[str, float]:
    """A sweep's wall, cut into: before its first trial started, between trials with none
    up, trials up but none training, at least one training (each run's startup excluded),
    and after the last trial ended (the parts add up to the wall); and the GPU's mean
    utilisation from the first trial's start to the last one's end."""
    trials = [t for t in sweep["timeline"]["trials"] if t["finished_s"] is not None]
    first = min(t["started_s"] for t in trials)
    last = max(t["finished_s"] for t in trials)
    running = _covered([(t["started_s"], t["finished_s"]) for t in trials])
    training = _covered(
        [
            (t["train_started_s"] + (t["startup_s"] or 0.0), t["finished_s"])
            for t in trials
            if t["train_started_s"] is not None
        ]
    )
    samples = [u for at, u in sweep["timeline"]["gpu_utilization"] if first <= at <= last]
    return {
        "wall_s": sweep["wall_s"],
        # mean utilisation while trials are up: the packing, apart from the sweep's start
        "gpu_busy_with_trials_up": sum(samples) / len(samples) / 100 if samples else None,
        "before_first_trial_s": first,
        "no_trial_up_s": last - first - running,
        "trials_up_none_training_s": running - training,
        "training_s": training,
        "after_last_trial_s": sweep["wall_s"] - last,
    }


def plot(sweeps: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(sweeps), 1, figsize=(10, 3.2 * len(sweeps)), squeeze=False)
    widths = sorted({t["width"] for s in sweeps for t in s["timeline"]["trials"]})
    colors = dict(zip(widths, plt.get_cmap("viridis")([0.15, 0.5, 0.85, 0.3, 0.7]), strict=False))
    for ax, sweep in zip(axes[:, 0], sweeps, strict=True):
        trials = sorted(sweep["timeline"]["trials"], key=lambda t: t["started_s"])
        for row, t in enumerate(trials):
            end = t["finished_s"] if t["finished_s"] is not None else sweep["wall_s"]
            train = t["train_started_s"] if t["train_started_s"] is not None else end
            steady = min(end, train + (t["startup_s"] or 0.0))
            color = colors[t["width"]]
            ax.barh(row, train - t["started_s"], left=t["started_s"], color=color, alpha=0.2)
            ax.barh(row, steady - train, left=train, color=color, alpha=0.5)
            ax.barh(row, end - steady, left=steady, color=color)
        gpu = ax.twinx()
        samples = sweep["timeline"]["gpu_utilization"]
        gpu.plot([s[0] for s in samples], [s[1] for s in samples], color="crimson", lw=0.8)
        gpu.set_ylim(0, 105)
        gpu.set_ylabel("GPU utilisation %", color="crimson")
        cache = f", kernel cache {sweep['kernel_cache']}" if sweep["kernel_cache"] else ""
        ax.set_title(
            f"µS {sweep['precision'].upper()}{cache}: {sweep['wall_s']:.1f} s, "
            f"GPU busy {100 * sweep['gpu_busy_fraction']:.0f}%",
            fontsize=10,
        )
        ax.set_xlim(0, sweep["wall_s"])
        ax.set_ylabel("trial")
        for w in widths:
            ax.barh(0, 0, color=colors[w], label=f"width {w}")
        ax.legend(loc="lower right", fontsize=7)
    axes[-1, 0].set_xlabel("seconds since the sweep started")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=PICTURE)
    args = parser.parse_args(argv)
    sweeps = [s for s in json.loads(args.results.read_text())["sweeps"] if "timeline" in s]
    plot(sweeps, args.out)
    splits = [
        {"precision": s["precision"], "kernel_cache": s["kernel_cache"], **split(s)} for s in sweeps
    ]
    print(json.dumps(splits))
    return splits


if __name__ == "__main__":
    main()
