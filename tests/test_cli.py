"""The CLI as users run it: a subprocess, JSON on stdout, one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def sweeper(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sweeper", *args], capture_output=True, text=True, timeout=300
    )


def test_train_json(shakespeare):
    out = sweeper(
        "train",
        "--data",
        shakespeare,
        "--steps",
        "20",
        "--eval-interval",
        "10",
        "--batch-size",
        "4",
        "--width",
        "32",
        "--precision",
        "bf16",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    assert payload["status"] == "completed" and payload["steps"] == 20
    assert 0 < payload["final_eval_loss"] < 6 and payload["tokens_per_s"] > 0
    assert payload["config"]["model"]["width"] == 32
    assert payload["config"]["precision"] == "bf16"


def test_train_diverged_json_has_null_loss(shakespeare):
    out = sweeper(
        "train",
        "--data",
        shakespeare,
        "--steps",
        "50",
        "--eval-interval",
        "5",
        "--batch-size",
        "4",
        "--lr",
        "1e6",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "diverged"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--width", "100"], "multiple of head_dim"),
        (["--lr", "-1"], "--lr"),
        (["--precision", "fp7"], "--precision"),
        (["--width", "abc"], "--width"),
        (["--preset", "nope"], "unknown preset"),
        (["--data", "/no/such/file.txt"], "no such file"),
        (["--no-such-option", "1"], "No such option"),
    ],
)
def test_bad_train_options_exit_2_with_one_line(args, needle):
    out = sweeper("train", *args)
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in out.stderr


@pytest.mark.parametrize("widths", ["64,a", "64,100", ""])
def test_bad_coord_check_widths(widths):
    out = sweeper("coord-check", "--widths", widths)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1
