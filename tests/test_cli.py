"""The CLI as users run it: a subprocess, JSON on stdout, one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sweeper.cluster import local_node
from sweeper.settings import DB_URL_VAR
from tests.conftest import tiny_sweep


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


# A fresh interpreter runs each command through the console script's entry point: what it
# imports is what every start of the CLI pays (torch: seconds of CPU).
IMPORTS_NO_TORCH = """
import json, sys
from sweeper.cli import main
import api.server  # what `sweeper serve` hands its process to
assert "torch" not in sys.modules, "importing the CLI or the API imported torch"
for args, code in json.loads(sys.argv[1]):
    sys.argv = ["sweeper", *args]
    try:
        main()
    except SystemExit as e:
        assert e.code == code, (args, e.code)
    assert "torch" not in sys.modules, f"`sweeper {' '.join(args)}` imported torch"
import sweeper.driver, sweeper.engine  # a sweep's driver: its trials train in Ray's workers
assert "torch" not in sys.modules, "a sweep's driver imported torch"
"""


def test_what_does_not_train_never_imports_torch(tmp_path: Path, shakespeare: str) -> None:
    """Only `train` and `coord-check` need torch: help, a bad option, listing, showing,
    cancelling, a transfer, preparing data and starting a sweep or a run (refused here, as
    asking for more CPUs than this machine has) run without it, and so do the API and a
    sweep's driver."""
    too_many = int(local_node().cpu) + 1
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(tiny_sweep(shakespeare, resources={"cpu": too_many})))
    commands = [
        (["--help"], 0),
        (["train", "--width", "100"], 2),
        (["coord-check", "--widths", "64,a"], 2),
        (["sweep", "list", "--json"], 0),
        (["sweep", "status", "1"], 1),
        (["sweep", "cancel", "1"], 1),
        (["run", "list", "--json"], 0),
        (["run", "metrics", "1"], 1),
        (["transfer", "--to-width", "256"], 1),
        (["data", "prepare", shakespeare, "--tokenizer", "bytes", "--out", str(tmp_path / "d")], 0),
        (["sweep", "start", str(spec)], 2),
        (["launch", "--to-width", "64", "--steps", "10", "--workers", str(too_many)], 2),
    ]
    # No Ray address: a driver's cluster would be local, so the service checks this machine.
    env = {k: v for k, v in os.environ.items() if k not in ("SWEEPER_RAY_ADDRESS", "RAY_ADDRESS")}
    env |= {DB_URL_VAR: f"sqlite:///{tmp_path / 'sweeper.db'}", "XDG_STATE_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS_NO_TORCH, json.dumps(commands)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
