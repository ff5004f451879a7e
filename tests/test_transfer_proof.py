"""The transfer proof end to end at the tiny scale (examples/proof_tiny.yaml), as a user runs
it: `python -m benchmarks.transfer_proof` processes over one SQLite file, each starting its own
local Ray cluster, drivers training on it, then the report over the same file.

One experiment serves every test (CI has two cores): a first invocation that its budget stops
mid-way (repeated while no trial had finished yet: a loaded machine), a rerun that finishes
it without re-running what had finished, a rerun that finds nothing to do.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

import db
from benchmarks.proof_report import CHROMIUM
from benchmarks.transfer_proof import (
    ProofSpec,
    _resumable_here,
    check_spec,
    find_jobs,
    launch_request,
    plan,
    proof_results,
    proxy_spec,
)
from models import ModelConfig
from sweeper.settings import DB_URL_VAR
from sweeper.transfer import TrialOutcome, compute_transfer
from tests.conftest import REPO, drivers_of

TINY = REPO / "examples" / "proof_tiny.yaml"
PROOF = REPO / "examples" / "proof.yaml"
BUDGET_S = 45  # the proxies take longer: the first invocation stops among them
BUDGET_TRIES = 3  # budget-stopped invocations (45, 90, 180 s) until one finished a trial


def test_the_gpu_spec_is_the_issue_s_experiment(shakespeare):
    spec = ProofSpec.load(PROOF, data=shakespeare)
    assert spec.proxies.train.data == shakespeare and spec.proxies.resources.gpu == 0.125
    stages = plan(spec)
    assert [s.name for s in stages[:2]] == ["proof/mus-fp8-proxies", "proof/sp-bf16-proxies"]
    assert len(stages) == 2 + 2 * (2 + 1 + 2)  # per target: two runs and a check per side, BF16
    mus, sp = (proxy_spec(spec, s) for s in stages[:2])
    assert (mus.train.precision, mus.train.model.parametrization) == ("fp8", "mus")
    assert (sp.train.precision, sp.train.model.parametrization) == ("bf16", "sp")
    assert mus.widths == sp.widths == [128, 256, 512] and mus.train.model.depth == 4
    assert mus.search.lr.points >= 7 and 2 <= len(mus.search.wd) <= 3
    assert len(mus.plan()) == 42
    # The optima measured on an H200 (µS 2^-5, SP 2^-9 .. 2^-12) lie inside, off the edges.
    assert math.log2(mus.search.lr.min) < -5 < math.log2(mus.search.lr.max)
    assert math.log2(sp.search.lr.min) < -12 and math.log2(sp.search.lr.max) > -9
    run = launch_request(spec, stages[2], proxies_id=1)
    assert (run.name, run.to_width, run.precision) == ("proof/mus-fp8-w2048", 2048, "fp8")
    assert run.gpus_per_worker == 0.25 and run.steps == 500
    assert run.checkpoint_every is not None and run.checkpoint_every > run.steps  # none


def test_a_check_sweep_reaches_the_drift_line_of_a_drifting_side(shakespeare):
    spec = ProofSpec.load(PROOF, data=shakespeare)
    stage = next(s for s in plan(spec) if s.name == "proof/check-sp-bf16-w4096")
    model = ModelConfig(head_dim=64, parametrization="sp")
    # SP-like proxies: the optimum falls by one log2 per doubling, from 2^-9 at width 128.
    outcomes = [
        TrialOutcome(w, 2.0**x, 0.0, 2.0 + 0.05 * (x - (-9 - i)) ** 2)
        for i, w in enumerate([128, 256, 512])
        for x in range(-14, -5)
    ]
    transfer = compute_transfer(outcomes, model=model, to_width=4096)
    proxies = proxy_spec(spec, next(s for s in plan(spec) if s.name == "proof/sp-bf16-proxies"))
    check = check_spec(spec, stage, proxies, transfer.to_dict())
    assert check.widths == [4096] and check.search.wd == [transfer.base_wd]
    assert check.train.steps == spec.targets.steps and check.resources.gpu == 0.25
    log2 = [math.log2(lr / transfer.base_lr) for lr in check.search.lr.grid()]
    assert log2[1] - log2[0] == pytest.approx(0.5)  # steps of 2^0.5 through the transferred LR
    assert min(abs(x) for x in log2) == pytest.approx(0.0, abs=1e-9)
    assert max(log2) == pytest.approx(1.0)
    reach = math.log2(transfer.extrapolated_lr / transfer.base_lr)  # about -3.5: far below
    assert min(log2) <= reach - 0.75


def test_a_stopped_run_resumes_only_where_it_can_continue_cleanly(tmp_path):
    """From its checkpoint, when that is here; from step 0, when it recorded nothing; else a
    new run of the same name starts, and the newest of a name is the stage's job."""
    database = db.connect(f"sqlite:///{tmp_path / 'runs.db'}")
    stage = next(s for s in plan(ProofSpec.load(TINY)) if s.role == "run")
    config = {"launch": {"steps": 20}, "train": {"data": "stdlib"}}

    def run(checkpoint: str | None, points: int) -> db.Run:
        run_id = db.create_run(database, name=stage.name, config=config)
        if checkpoint is not None:
            db.set_run_checkpoint(database, run_id=run_id, checkpoint_path=checkpoint)
        db.add_metric_points(
            database,
            run_id=run_id,
            points=[
                db.MetricPoint(step=s, tokens=s, train_loss=3.0, time_s=1.0)
                for s in range(10, 10 * points + 1, 10)
            ],
        )
        return db.get_run(database, run_id=run_id)

    (tmp_path / "checkpoint").mkdir()
    assert _resumable_here(database, run(None, 0))
    assert not _resumable_here(database, run(None, 1))
    assert _resumable_here(database, run(str(tmp_path / "checkpoint"), 1))
    assert not _resumable_here(database, run(str(tmp_path / "elsewhere"), 1))
    assert _resumable_here(database, run("s3://bucket/run-1", 1))  # a URI: Ray's to find
    newest = run(None, 0)
    assert find_jobs(database, [stage])[stage.name].id == newest.id
    database.dispose()


@dataclass(frozen=True)
class Experiment:
    database: db.Database
    db_path: Path
    results: Path
    env: dict[str, str]
    invocations: list[subprocess.CompletedProcess[str]]  # budget-stopped, finishing, idle
    after_stop: dict[str, db.Trial]  # by sweep name and key, finished at the budget stop
    jobs_after_finish: tuple[list[int], list[int]]  # sweep ids, run ids

    def trials(self) -> dict[str, db.Trial]:
        return {
            f"{s.name} {t.key}": t
            for s in db.list_sweeps(self.database).items
            for t in db.list_trials(self.database, sweep_id=s.id)
        }


def _ray_processes(temp_dir: str) -> list[psutil.Process]:
    """Ray's own processes (raylet, GCS, workers) of a cluster under ``temp_dir``."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(temp_dir in part for part in proc.info["cmdline"] or []):
            found.append(proc)
    return found


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, shakespeare) -> Iterator[Experiment]:
    tmp = tmp_path_factory.mktemp("proof")
    ray_tmp = tempfile.mkdtemp(prefix="rp-")  # short: Ray's socket paths must fit 107 bytes
    db_path, results = tmp / "proof.db", tmp / "transfer_proof.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", DB_URL_VAR)} | {
        "RAY_TMPDIR": ray_tmp,  # the cluster's files apart from other Ray users of the machine
        "SWEEPER_RAY_STORAGE": str(tmp / "ray_results"),
        "XDG_STATE_HOME": str(tmp / "state"),
    }

    def invoke(*extra: str) -> subprocess.CompletedProcess[str]:
        command = ["--spec", str(TINY), "--db", str(db_path), "--data", shakespeare]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.transfer_proof",
                *command,
                "--results",
                str(results),
                *extra,
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        print(done.stdout, done.stderr[-3000:], sep="\n")  # shown when a test fails
        return done

    database = db.connect(f"sqlite:///{db_path}")
    try:
        # On a loaded machine (CI's two cores, both busy) a budget may end before any trial
        # finished: the next invocation resumes it, as a user would, with twice the budget
        # (a cancelled trial starts again, so an equal budget could again finish nothing).
        for attempt in range(BUDGET_TRIES):
            stopped = invoke("--budget-s", str(BUDGET_S * 2**attempt))
            after_stop = {
                f"{s.name} {t.key}": t
                for s in db.list_sweeps(database).items
                for t in db.list_trials(database, sweep_id=s.id)
                if t.status.finished
            }
            if after_stop or stopped.returncode != 3:
                break
        finishing = invoke()
        jobs = (
            [s.id for s in db.list_sweeps(database).items],
            [r.id for r in db.list_runs(database).items],
        )
        idle = invoke()
        yield Experiment(
            database, db_path, results, env, [stopped, finishing, idle], after_stop, jobs
        )
    finally:
        for proc in drivers_of(database.url):  # none left behind a failure
            proc.kill()
        database.dispose()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_budget_stops_it_resumably_and_leaves_no_process(experiment):
    stopped = experiment.invocations[0]
    assert stopped.returncode == 3, stopped.stderr
    assert "cancelled at the budget (resumable)" in stopped.stdout
    assert "remaining (" in stopped.stdout and "remaining (0)" not in stopped.stdout
    assert experiment.after_stop, "nothing finished before the budget: the resume proves nothing"
    # Nothing outlives an invocation: no driver, and no process of its Ray cluster.
    assert drivers_of(experiment.database.url) == []
    assert _ray_processes(experiment.env["RAY_TMPDIR"]) == []


def test_the_rerun_finishes_every_stage_without_rerunning_finished_trials(experiment):
    finishing = experiment.invocations[1]
    assert finishing.returncode == 0, finishing.stderr
    assert "resumed (was cancelled)" in finishing.stdout
    assert "remaining (0): -" in finishing.stdout
    trials = experiment.trials()
    for key, before in experiment.after_stop.items():
        after = trials[key]
        assert (after.id, after.finished_at, after.final_eval_loss) == (
            before.id,
            before.finished_at,
            before.final_eval_loss,
        ), f"{key} ran again"
    spec = ProofSpec.load(TINY)
    # newest first in the lists: a run restarted afresh leaves its old attempt under its name
    sweeps = {s.name: s for s in reversed(db.list_sweeps(experiment.database).items)}
    runs = {r.name: r for r in reversed(db.list_runs(experiment.database).items)}
    for stage in plan(spec):
        job = (runs if stage.kind == "run" else sweeps)[stage.name]
        assert job.status is db.JobStatus.COMPLETED, (stage.name, job.error)
    for sweep in sweeps.values():  # every planned trial once, finished
        listed = db.list_trials(experiment.database, sweep_id=sweep.id)
        assert all(t.status is db.TrialStatus.COMPLETED for t in listed), sweep.name
    assert len(runs) == 3 and all(
        len(db.get_run_curve(experiment.database, run_id=r.id)) == 2 for r in runs.values()
    )


def test_the_check_sweep_steps_through_the_transferred_lr(experiment):
    results = json.loads(experiment.results.read_text())
    sweeps = {s.name: s for s in db.list_sweeps(experiment.database).items}
    for label, side in results["sides"].items():
        target = side["targets"]["128"]
        check = sweeps[f"proof-tiny/check-{label}-w128"]
        assert check.spec["widths"] == [128]
        lrs = sorted(t.params["lr"] for t in db.list_trials(experiment.database, sweep_id=check.id))
        log2 = [math.log2(lr / target["transferred_lr"]) for lr in lrs]
        assert log2 == pytest.approx([-1.0, 0.0, 1.0], abs=1e-4)  # spans ±1 in steps of 1


def test_a_rerun_of_the_finished_experiment_does_nothing(experiment):
    idle = experiment.invocations[2]
    assert idle.returncode == 0, idle.stderr
    assert "7 stages, 7 completed, 0 to do" in idle.stdout
    assert "Started a local Ray instance" not in idle.stderr  # no cluster for nothing
    jobs = (
        [s.id for s in db.list_sweeps(experiment.database).items],
        [r.id for r in db.list_runs(experiment.database).items],
    )
    assert jobs == experiment.jobs_after_finish


def test_the_results_come_from_the_database(experiment):
    written = json.loads(experiment.results.read_text())
    spec = ProofSpec.load(TINY, data=written["spec"]["proxies"]["train"]["data"])
    computed = proof_results(experiment.database, spec, written["time"]["invocations"])
    for key in ("complete", "stages", "sides", "comparisons", "goals"):
        assert computed[key] == written[key], key
    assert written["complete"] is True
    # one budget stop or more (a loaded machine: see the fixture), then the finishing and the
    # idle invocation
    exits = [i["exit"] for i in written["time"]["invocations"]]
    assert exits[-2:] == [0, 0] and set(exits[:-2]) == {3}, exits
    assert written["time"]["wall_s"] == pytest.approx(
        sum(i["wall_s"] for i in written["time"]["invocations"])
    )
    mus, sp = written["sides"]["mus-fp8"], written["sides"]["sp-bf16"]
    assert [o["width"] for o in mus["optima"]] == [32, 64] and mus["drift"] is not None
    # The loss gap is the transferred run against the best trial of its check sweep.
    target = mus["targets"]["128"]
    run = db.get_run_curve(experiment.database, run_id=target["run"]["id"])[-1].eval_loss
    check = db.list_trials(experiment.database, sweep_id=target["check"]["id"])
    best = min(t.final_eval_loss for t in check)
    assert target["run"]["final_eval_loss"] == run
    assert target["loss_gap"] == pytest.approx(run / best - 1)
    bf16 = target["also"]["bf16"]["final_eval_loss"]
    fp8_vs_bf16 = written["comparisons"]["fp8_vs_bf16"]["128"]["mus-fp8"]
    assert fp8_vs_bf16["gap"] == pytest.approx(run / bf16 - 1)
    sp_best = sp["targets"]["128"]["check"]["best"]["best_loss"]
    assert written["comparisons"]["mus_vs_sp"]["128"]["gap"] == pytest.approx(run / sp_best - 1)
    assert {g["met"] for g in written["goals"]} <= {True, False, None}


def test_the_report_writes_the_note_and_its_pictures(experiment, tmp_path):
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
    if not CHROMIUM.is_file():
        pytest.skip(f"no system chromium at {CHROMIUM} (apt-get install chromium)")
    out = tmp_path / "docs"  # never the repository's docs/: those come from a GPU run
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.proof_report", "--db", str(experiment.db_path),
         "--results", str(experiment.results), "--out", str(out)],
        cwd=REPO, env=experiment.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    pictures = sorted(p.name for p in (out / "experiments").iterdir())
    assert pictures == [
        "compare.png",
        "run-mus-bf16-w128.png",
        "run-mus-fp8-w128.png",
        "run-sp-bf16-w128.png",
    ]
    assert all((out / "experiments" / p).stat().st_size > 10_000 for p in pictures)
    note = (out / "EXPERIMENTS.md").read_text()
    results = json.loads(experiment.results.read_text())
    drift = results["sides"]["mus-fp8"]["drift"]
    assert f"| mus-fp8 | {drift['slope']:+.2f} ± {drift['uncertainty']:.2f} |" in note
    assert "![the comparison view](experiments/compare.png)" in note
    assert "not complete" not in note
    for picture in pictures:
        assert f"(experiments/{picture})" in note
