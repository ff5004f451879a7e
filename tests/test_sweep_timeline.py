"""The proxy sweep's timeline split and picture (`benchmarks.sweep_timeline`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.sweep_timeline import main, split


def _sweep() -> dict:
    # Two trials, one after the other with a gap: 2 s before the first, trial 1 up 2-6 s
    # (its run starts at 3 s, trains after a 1 s startup), none up 6-7 s, trial 2 up 7-9 s
    # (run at 7.5 s, 0.5 s startup), 1 s after it.
    keys = ("width", "started_s", "train_started_s", "startup_s", "finished_s")
    rows = [(128, 2.0, 3.0, 1.0, 6.0), (256, 7.0, 7.5, 0.5, 9.0)]
    trials = [dict(zip(keys, row, strict=True)) for row in rows]
    return {
        "precision": "fp8",
        "kernel_cache": "cold",
        "wall_s": 10.0,
        "gpu_busy_fraction": 0.4,
        "timeline": {"trials": trials, "gpu_utilization": [[0.0, 0.0], [5.0, 80.0]]},
    }


def test_the_split_adds_up_to_the_wall() -> None:
    parts = split(_sweep())
    assert parts == pytest.approx({
        "wall_s": 10.0,
        "gpu_busy_with_trials_up": 0.8,  # the one sample between 2 s and 9 s
        "before_first_trial_s": 2.0,
        "no_trial_up_s": 1.0,
        "trials_up_none_training_s": 3.0,  # 2-4 s and 7-8 s
        "training_s": 3.0,  # 4-6 s and 8-9 s
        "after_last_trial_s": 1.0,
    })  # fmt: skip
    seconds = {k: v for k, v in parts.items() if k.endswith("_s") and k != "wall_s"}
    assert sum(seconds.values()) == pytest.approx(10.0)


def test_overlapping_trials_count_once() -> None:
    sweep = _sweep()
    sweep["timeline"]["trials"][1] |= {"started_s": 3.0, "train_started_s": 3.0, "startup_s": 0.0}
    parts = split(sweep)
    assert parts["no_trial_up_s"] == pytest.approx(0.0)
    assert parts["training_s"] == pytest.approx(6.0)  # 3-9 s: trial 2 trains from 3 s


def test_the_picture_is_drawn(tmp_path: Path) -> None:
    results = tmp_path / "proxy_speed_sweep.json"
    results.write_text(json.dumps({"sweeps": [_sweep(), {"precision": "bf16"}]}))
    splits = main(["--results", str(results), "--out", str(tmp_path / "timeline.png")])
    assert [s["precision"] for s in splits] == ["fp8"]  # a sweep without a timeline is left out
    assert (tmp_path / "timeline.png").stat().st_size > 10_000
