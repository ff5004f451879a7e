"""The README's main job, as a user runs it after the install: sweep, transfer, launch."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import db
from sweeper.settings import DB_URL_VAR

README = Path(__file__).resolve().parents[1] / "README.md"


def demo_commands() -> list[list[str]]:
    """The `sweeper ...` steps of the README's first shell block (the install steps before
    them are what CI itself runs)."""
    block = re.search(r"```bash\n(.*?)\n```", README.read_text(), re.S)
    assert block is not None, "README.md has no bash block"
    steps = [shlex.split(step) for step in block.group(1).split("&&")]
    return [step for step in steps if step[0] == "sweeper"]


def test_the_readme_main_job_sweeps_transfers_and_launches(tmp_path):
    commands = demo_commands()
    assert [c[:2] for c in commands] == [
        ["sweeper", "sweep"],
        ["sweeper", "transfer"],
        ["sweeper", "launch"],
    ]
    env = os.environ | {
        DB_URL_VAR: f"sqlite:///{tmp_path / 'sweeper.db'}",
        "SWEEPER_RAY_STORAGE": str(tmp_path / "ray_results"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    repo = README.parent
    for command in commands:
        done = subprocess.run(
            [sys.executable, "-m", *command],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"{shlex.join(command)}\n{done.stdout}\n{done.stderr}"
    database = db.connect(env[DB_URL_VAR])
    (sweep,) = db.list_sweeps(database).items
    assert sweep.status is db.JobStatus.COMPLETED
    assert len(db.list_transfers(database, sweep_id=sweep.id)) == 2  # transfer, then launch
    (run,) = db.list_runs(database).items
    assert run.status is db.JobStatus.COMPLETED and run.sweep_id == sweep.id
    curve = db.get_run_curve(database, run_id=run.id)
    assert curve and curve[-1].step == run.config["train"]["steps"]
    assert run.config["train"]["model"]["width"] == 256
    database.dispose()
