"""The sweep engine end to end: real Ray local clusters, a real SQLite file, driver processes.

Each sweep runs in its own driver process (`python -m sweeper.driver`), as in production,
over the `database` fixture of tests/conftest.py (its Ray clusters in a temp dir of their own).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable

import optuna
import pytest
import ray

import db
from models.train import train
from sweeper import service
from sweeper.cluster import NodeResources, nodes_that_fit
from sweeper.engine import optuna_study_name
from sweeper.jobs import driver_process_alive
from sweeper.spec import SweepSpec
from sweeper.warm_up import wait_for_warm_up
from tests.conftest import debug_config, drivers_of, tiny_sweep

TIMEOUT_S = 240


def make_spec(shakespeare: str, **overrides) -> SweepSpec:
    return SweepSpec.model_validate(tiny_sweep(shakespeare, **overrides))


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


# Trials long enough that a driver killed once two finished is still mid-sweep: a
# warm trial of the tiny sweep trains 60 steps in ~0.25 s, less than `wait_for`'s poll, so
# at 60 steps the whole sweep could end between two polls (CI saw it).
MID_SWEEP_TRAIN = {"steps": 600, "eval_interval": 100}
# each whole curve's points: one every eval_interval steps, the last at the last step
MID_SWEEP_CURVE_STEPS = list(
    range(
        MID_SWEEP_TRAIN["eval_interval"],
        MID_SWEEP_TRAIN["steps"] + 1,
        MID_SWEEP_TRAIN["eval_interval"],
    )
)


def kill_driver_mid_sweep(database: db.Database, sweep_id: int) -> tuple[int, dict[str, db.Trial]]:
    """SIGKILL the sweep's driver once two trials finished; returns its pid and the trials
    finished by then, by key. Fails if the sweep ended first: the kill must land mid-sweep."""

    def finished() -> list[db.Trial]:
        return [t for t in db.list_trials(database, sweep_id=sweep_id) if t.status.finished]

    wait_for(lambda: len(finished()) >= 2, "two finished trials")
    (driver,) = drivers_of(database.url)
    driver.kill()
    wait_for(
        lambda: driver_process_alive("sweep", sweep_id, driver.pid) is False,  # None: no /proc
        "the killed driver to exit",
        timeout=30,
    )
    status = db.get_sweep(database, sweep_id=sweep_id).status  # queued: a watchdog resumed it
    assert not status.finished, f"the sweep had ended ({status}) when its driver was killed"
    return driver.pid, {t.key: t for t in finished()}


def run_to_end(database: db.Database, sweep_id: int) -> service.SweepProgress:
    wait_for(
        lambda: service.sweep_progress(database, sweep_id).sweep.status.finished,
        f"sweep {sweep_id} to end",
    )
    return service.sweep_progress(database, sweep_id)


def test_grid_sweep_with_a_diverging_lr(database, shakespeare):
    # LRs 2^-6, 12.5 and 1e4: the larger two diverge, and the sweep goes on.
    spec = make_spec(shakespeare, search={"lr": {"min": 2**-6, "max": 1e4, "points": 3}})
    sweep = service.start_sweep(database, spec)
    progress = run_to_end(database, sweep.id)
    assert progress.sweep.status is db.JobStatus.COMPLETED, progress.sweep.error
    assert progress.planned == len(progress.trials) == 6
    for trial in progress.trials:
        expected = db.TrialStatus.COMPLETED if trial.params["lr"] < 1 else db.TrialStatus.DIVERGED
        assert trial.status is expected, trial
    curves = db.get_curves(database, sweep_id=sweep.id)
    for trial in progress.trials:
        steps = [p.step for p in curves[trial.id]]
        if trial.status is db.TrialStatus.COMPLETED:
            assert steps == [10, 20] and trial.final_eval_loss is not None
            # startup is reported apart from the steady-state speed, and stored with both
            assert trial.startup_s is not None and trial.startup_s > 0
            assert {p.startup_s for p in curves[trial.id]} == {trial.startup_s}
        else:
            assert steps and steps == sorted(set(steps))  # the diverged curve is kept
        assert trial.node_id


def test_a_trial_waits_for_its_node_s_warm_up_and_goes_on_without_a_failed_or_late_one(ray_tmp):
    # defined here, so Ray ships them by value (the workers cannot import this module)
    def _warm_up_for(seconds: float) -> dict[int, float]:
        time.sleep(seconds)
        return {16: seconds}

    def _failing_warm_up() -> dict[int, float]:
        raise RuntimeError("out of memory while tuning")

    ray.init(num_cpus=3, include_dashboard=False)
    try:
        done, failed, late = (
            ray.remote(_warm_up_for).remote(2.0),
            ray.remote(_failing_warm_up).remote(),
            ray.remote(_warm_up_for).remote(120.0),
        )
        wait_for_warm_up(done)
        assert ray.wait([done], timeout=0)[0] == [done]
        wait_for_warm_up(failed)  # the trial goes on: its own run reports any real error
        wait_for_warm_up(late, timeout_s=1.0)
        assert ray.wait([late], timeout=0)[0] == []  # it went on before the warm-up ended
        wait_for_warm_up(None)  # BF16 and CPU sweeps, and nodes no trial fits, have none
        # a warm-up for each node a trial fits on (by its totals, busy or not)
        (node,) = ray.nodes()
        assert nodes_that_fit(NodeResources(cpu=3, gpu=0)) == [node["NodeID"]]
        assert nodes_that_fit(NodeResources(cpu=1, gpu=0.125)) == []
    finally:
        ray.shutdown()


def test_a_trial_s_run_builds_itself_then_waits_off_its_clock(shakespeare):
    """The trial waits for its node's warm-up inside its run (`train`'s before_first_step):
    once, after the run is built and before its first step, and the wait is not startup."""
    events: list[str] = []

    def wait() -> None:
        events.append("wait")
        time.sleep(3.0)

    begun = time.perf_counter()
    result = train(
        debug_config(shakespeare, steps=4, eval_interval=2),
        report=lambda point: events.append("point"),
        before_first_step=wait,
    )
    outside = time.perf_counter() - begun
    assert result.status == "completed" and events == ["wait", "point", "point"]
    assert outside - result.wall_s >= 3.0  # the run's clock left the wait out
    assert result.startup_s < result.wall_s


def test_tpe_sweep_shares_the_database_with_optuna(database, shakespeare):
    spec = make_spec(
        shakespeare,
        algorithm="tpe",
        trials_per_width=3,
        search={"lr": {"min": 2**-8, "max": 2**-2}, "wd": [0.0, 0.1]},
        max_concurrency=2,
    )
    sweep = service.start_sweep(database, spec)
    progress = run_to_end(database, sweep.id)
    assert progress.sweep.status is db.JobStatus.COMPLETED, progress.sweep.error
    assert len(progress.trials) == 6
    storage = optuna.storages.RDBStorage(database.url)
    for width in spec.widths:
        study = optuna.load_study(study_name=optuna_study_name(sweep.id, width), storage=storage)
        optuna_params = sorted((t.params["lr"], t.params["wd"]) for t in study.trials)
        ours = sorted((t.params["lr"], t.params["wd"]) for t in progress.trials if t.width == width)
        assert [wd for _, wd in optuna_params] == [wd for _, wd in ours]
        assert [lr for lr, _ in optuna_params] == pytest.approx([lr for lr, _ in ours])
        assert all(t.state is optuna.trial.TrialState.COMPLETE for t in study.trials)


def test_kill_driver_then_resume(database, shakespeare):
    spec = make_spec(
        shakespeare,
        search={"lr": {"min": 2**-8, "max": 2**-2, "points": 4}, "wd": [0.0]},
        train=make_spec(shakespeare).train.model_copy(update=MID_SWEEP_TRAIN),
    )
    sweep = service.start_sweep(database, spec)
    _, before = kill_driver_mid_sweep(database, sweep.id)
    progress = service.sweep_progress(database, sweep.id)
    assert progress.sweep.status is db.JobStatus.RUNNING
    # Its heartbeat is fresh, but on this host its process is seen gone: resumable at once.
    assert progress.stale
    service.resume_sweep(database, sweep.id)
    progress = run_to_end(database, sweep.id)
    assert progress.sweep.status is db.JobStatus.COMPLETED, progress.sweep.error
    assert len(progress.trials) == len(spec.plan()) == 8
    assert len({t.key for t in progress.trials}) == 8
    for key, trial in before.items():  # finished trials were not re-run
        after = next(t for t in progress.trials if t.key == key)
        assert (after.id, after.finished_at) == (trial.id, trial.finished_at)
    curves = db.get_curves(database, sweep_id=sweep.id)
    for trial in progress.trials:
        assert [p.step for p in curves[trial.id]] == MID_SWEEP_CURVE_STEPS


def test_cancel_stops_trials_and_keeps_points(database, shakespeare):
    spec = make_spec(
        shakespeare,
        train=make_spec(shakespeare).train.model_copy(update={"steps": 5000, "eval_interval": 5}),
    )
    sweep = service.start_sweep(database, spec)
    wait_for(lambda: any(db.get_curves(database, sweep_id=sweep.id).values()), "a recorded point")
    cancelled_at = time.monotonic()
    assert service.cancel_sweep(database, sweep.id).status is db.JobStatus.CANCELLED
    wait_for(lambda: not drivers_of(database.url), "the driver to stop", timeout=60)
    assert time.monotonic() - cancelled_at < 60
    progress = service.sweep_progress(database, sweep.id)
    assert progress.sweep.status is db.JobStatus.CANCELLED
    assert progress.trials and all(t.status is not db.TrialStatus.RUNNING for t in progress.trials)
    assert all(t.steps is None or t.steps < 5000 for t in progress.trials)
    assert sum(len(c) for c in db.get_curves(database, sweep_id=sweep.id).values()) > 0
    with pytest.raises(db.Conflict):
        service.cancel_sweep(database, sweep.id)


def test_cli_sweep_commands(database, shakespeare, tmp_path):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(make_spec(shakespeare).model_dump_json())

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sweeper", "sweep", *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )

    started = cli("start", str(spec_path), "--wait", "--json")
    assert started.returncode == 0, started.stderr
    payload = json.loads(started.stdout)
    assert payload["status"] == "completed" and payload["finished"] == payload["planned"] == 4
    assert set(payload["best"]) == {"16", "32"}
    status = json.loads(cli("status", str(payload["id"]), "--json").stdout)
    assert status["best"] == payload["best"]
    trials = json.loads(cli("trials", str(payload["id"]), "--json").stdout)
    assert trials["total"] == 4 and {t["key"] for t in trials["items"]} >= {
        t["key"] for t in payload["best"].values()
    }
    listed = json.loads(cli("list", "--json").stdout)
    assert [s["id"] for s in listed["items"]] == [payload["id"]]
    done = cli("cancel", str(payload["id"]))
    assert done.returncode == 1 and "nothing to cancel" in done.stderr
    missing = cli("status", "999")
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1


def test_bad_spec_is_refused_and_nothing_is_written(database, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\ntrain: {model: {head_dim: 16}}\nwidths: [16, 20]\n"
        "search: {lr: {min: 0.1, max: 0.01}}\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "sweeper", "sweep", "start", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "widths" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert db.list_sweeps(database).total == 0
