"""A picture of one `benchmarks.train_throughput` run: how fast each variant trains at each
width, and where its step's device time goes.

One row of panels a width. Left: tokens/s of each measured variant, labelled with its ratio
to BF16 compiled (the run's own ``ratios``) and its peak memory. Right, for the variants the
run profiled (``--profile``): the kernel time of a step split by `KERNEL_FAMILIES`, with the
median step as a tick; the gap between the bars' end and the tick is time the GPU waited
(launches, the host). Families go by kernel name: torchao's scaling and casts are inductor
kernels, ours are `fp8_cast`. Variants skipped or failed in the run are left out and named.

    python -m benchmarks.throughput_report --results benchmarks/results/train_throughput.json
        [--out docs/experiments/train_throughput.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.common import KERNEL_FAMILIES

REPO = Path(__file__).resolve().parent.parent
PICTURE = REPO / "docs" / "experiments" / "train_throughput.png"
# A step's families left to right: the matmuls first, then what each recipe adds around them
# ("other": `kernel_family`'s name for the rest).
FIRST = ("gemm", "attention")
FAMILIES = [*FIRST, *(f for f in KERNEL_FAMILIES if f not in FIRST), "other"]


def summary(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Per width and measured variant: tokens/s, the ratio to BF16 compiled, the median step,
    peak memory and, where profiled, the kernel time per step by family (ms)."""
    out = []
    for row in payload["rows"]:
        for name, result in row["variants"].items():
            if result["status"] != "measured":
                continue
            profile = result.get("profile")
            out.append({
                "width": row["width"],
                "variant": name,
                "tokens_per_s": result["tokens_per_s"],
                "over_bf16_compiled": row["ratios"].get(name, {}).get("over_bf16_compiled"),
                "step_ms_median": result["step_ms_median"],
                "peak_allocated_gib": result.get("peak_allocated_gib"),
                "kernel_ms": None if profile is None else profile["kernel_ms"],
                "family_ms": None if profile is None else profile["family_ms"],
            })  # fmt: skip
    return out


def _not_measured(row: dict[str, Any]) -> str:
    variants = row["variants"].items()
    names = [f"{name} ({r['status']})" for name, r in variants if r["status"] != "measured"]
    return f"not measured: {', '.join(names)}" if names else ""


def plot(payload: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows, measured = payload["rows"], summary(payload)
    height = 0.6 + sum(1.4 + 0.4 * len(row["variants"]) for row in rows)
    fig, axes = plt.subplots(
        len(rows), 2, figsize=(13, height), squeeze=False, gridspec_kw={"width_ratios": [1, 1.6]}
    )
    colors = dict(zip(FAMILIES, plt.get_cmap("tab10").colors, strict=False))
    env = payload["environment"]
    for (speed_ax, time_ax), row in zip(axes, rows, strict=True):
        here = [m for m in measured if m["width"] == row["width"]]
        names = [m["variant"] for m in here]
        speed_ax.barh(names, [m["tokens_per_s"] / 1e3 for m in here], color="slategray")
        for y, m in enumerate(here):
            label = []
            if m["over_bf16_compiled"] is not None:
                label.append(f"{m['over_bf16_compiled']:.2f}x")
            if m["peak_allocated_gib"] is not None:
                label.append(f"{m['peak_allocated_gib']:.1f} GiB")
            x = m["tokens_per_s"] / 1e3
            speed_ax.text(x, y, " " + " ".join(label), va="center", fontsize=8)
        speed_ax.invert_yaxis()
        speed_ax.set_xlabel("thousand tokens/s (label: vs bf16-compiled, peak memory)")
        speed_ax.set_title(
            f"width {row['width']}, depth {row['depth']}, {row['batch']} x {row['seq_len']}"
            f" tokens a step\n{_not_measured(row)}",
            fontsize=9,
        )
        speed_ax.margins(x=0.35)
        profiled = [m for m in here if m["family_ms"] is not None]
        if not profiled:
            time_ax.set_axis_off()
            time_ax.text(0.5, 0.5, "not profiled (--profile)", ha="center", va="center")
            continue
        for y, m in enumerate(profiled):
            left = 0.0
            for family in FAMILIES:
                ms = m["family_ms"].get(family, 0.0)
                time_ax.barh(y, ms, left=left, color=colors[family])
                left += ms
            time_ax.plot([m["step_ms_median"]] * 2, [y - 0.4, y + 0.4], color="black", lw=2)
        time_ax.set_yticks(range(len(profiled)), [m["variant"] for m in profiled])
        time_ax.invert_yaxis()
        time_ax.set_xlabel("ms a step: kernel time by family; tick: median step")
    fig.legend(
        handles=[Patch(color=colors[family], label=family) for family in FAMILIES],
        loc="lower center",
        ncol=len(FAMILIES),
        fontsize=8,
    )
    fig.suptitle(
        f"Whole training steps of the µS GPT, one {env.get('device', '?')}, "
        f"torch {env.get('torch', '?')}, triton {env.get('triton', '?')}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.6 / height, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True, help="a train_throughput JSON")
    parser.add_argument("--out", type=Path, default=PICTURE)
    args = parser.parse_args(argv)
    payload = json.loads(args.results.read_text())
    if payload.get("benchmark") != "train_throughput":
        parser.error(f"{args.results} is not a train_throughput result")
    plot(payload, args.out)
    rows = summary(payload)
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
