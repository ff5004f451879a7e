"""The service's watchdog: a job whose driver is gone is resumed while the service runs, at
most `max_auto_resumes` times in a row, then failed with the reason.

The end-to-end test runs `sweeper serve` as a process of its own on loopback, with real
drivers on a real Ray local cluster (in a temp dir of its own) over a real SQLite file, and
kills a driver with SIGKILL mid-sweep.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest

import db
from sweeper import service
from sweeper.jobs import Job, driver_gone, this_host
from sweeper.settings import Settings
from tests.conftest import drivers_of, exited_pid, sweeper_serve
from tests.test_sweep_engine import (
    MID_SWEEP_CURVE_STEPS,
    MID_SWEEP_TRAIN,
    kill_driver_mid_sweep,
    make_spec,
    wait_for,
)

TOKEN = "watchdog-token-0123456789"


@pytest.fixture
def served(database, tmp_path) -> Iterator[httpx.Client]:
    """`sweeper serve` over the test's database, with its default watchdog."""
    with sweeper_serve(tmp_path / "serve.log", TOKEN) as client:
        yield client


def test_a_driver_killed_under_a_running_service_is_resumed_and_its_sweep_completes(
    database,
    served,
    shakespeare,
):
    # 4 trials, 2 at a time (2 CPUs): the kill lands when 2 finished and 2 run.
    spec = make_spec(
        shakespeare, train=make_spec(shakespeare).train.model_copy(update=MID_SWEEP_TRAIN)
    )
    response = served.post("/sweeps", json=spec.model_dump(mode="json"))
    assert response.status_code == 202, response.text
    sweep_id = response.json()["id"]
    killed_pid, before = kill_driver_mid_sweep(database, sweep_id)
    gone_at = time.monotonic()

    def resumed() -> bool:
        return any(d.pid != killed_pid for d in drivers_of(database.url))

    wait_for(resumed, "the watchdog to start a new driver", timeout=60)
    resumed_after = time.monotonic() - gone_at
    wait_for(lambda: served.get(f"/sweeps/{sweep_id}").json()["status"] == "completed", "the end")
    completed_after = time.monotonic() - gone_at

    detail = served.get(f"/sweeps/{sweep_id}").json()
    assert detail["auto_resumes"] == 1 and not detail["stale"] and detail["error"] is None
    assert detail["planned"] == detail["finished"] == 4
    trials = db.list_trials(database, sweep_id=sweep_id)
    assert sorted(t.key for t in trials) == sorted(p.key for p in spec.plan())  # once each
    for key, trial in before.items():  # the finished trials were not run again
        after = next(t for t in trials if t.key == key)
        assert (after.id, after.finished_at) == (trial.id, trial.finished_at)
    curves = db.get_curves(database, sweep_id=sweep_id)
    for trial in trials:  # every curve whole, and no point stored twice
        assert [p.step for p in curves[trial.id]] == MID_SWEEP_CURVE_STEPS, trial.key
    print(
        f"killed driver gone -> new driver after {resumed_after:.1f} s,"
        f" sweep completed {completed_after:.0f} s after"
    )


# --- the watchdog's rules, on real rows and real (exited) processes ---------------------


@pytest.fixture
def sweep_id(database) -> int:
    """A sweep that was running, with a trial half-way."""
    sweep_id = db.create_sweep(database, name="s", spec={})
    db.set_sweep_status(database, sweep_id=sweep_id, status=db.JobStatus.RUNNING)
    trial_id = db.upsert_trial(database, sweep_id=sweep_id, key="w16-a", width=16, params={})
    point = db.MetricPoint(step=10, tokens=320, train_loss=3.0, eval_loss=3.1, time_s=1.0)
    db.add_metric_points(database, trial_id=trial_id, points=[point])
    return sweep_id


def test_a_driver_is_gone_when_its_process_exited_or_its_heartbeat_stopped(
    database,
    sweep_id,
):
    settings = Settings()
    job = Job(database, "sweep", sweep_id, settings)
    job.set_driver(this_host(), os.getpid())  # alive, but not this sweep's driver: gone
    assert driver_gone("sweep", db.get_sweep(database, sweep_id=sweep_id), settings)
    job.set_driver(this_host(), exited_pid())
    sweep = db.get_sweep(database, sweep_id=sweep_id)
    assert driver_gone("sweep", sweep, settings)  # at once, whatever the heartbeat says
    assert service.is_stale("sweep", sweep)

    job.set_driver("another-host", 12345)  # seen from here, only the heartbeat tells
    sweep = db.get_sweep(database, sweep_id=sweep_id)
    assert sweep.driver_heartbeat_at is not None
    assert not driver_gone("sweep", sweep, settings)
    later = sweep.driver_heartbeat_at + timedelta(seconds=settings.stale_s + 1)
    assert driver_gone("sweep", sweep, settings, now=later)
    assert settings.stale_s == 30.0  # 15 missed beats of 2 s


def test_the_watchdog_fails_a_job_it_resumed_too_often_and_closes_its_trials(
    database,
    sweep_id,
    monkeypatch,
):
    monkeypatch.setenv("SWEEPER_MAX_AUTO_RESUMES", "1")
    job = Job(database, "sweep", sweep_id, Settings())
    job.move(db.JobStatus.QUEUED, automatic=True)  # the watchdog's first resume
    job.move(db.JobStatus.RUNNING)
    pid = exited_pid()
    job.set_driver(this_host(), pid)

    assert service.recover_jobs(database) == [f"failed sweep {sweep_id}"]
    sweep = db.get_sweep(database, sweep_id=sweep_id)
    assert sweep.status is db.JobStatus.FAILED
    assert sweep.error is not None and "\n" not in sweep.error
    assert sweep.error.startswith(f"the driver is gone (pid {pid} on {this_host()}, last heartbeat")
    assert f"after 1 automatic resumes; see {service.driver_log('sweep', sweep_id)}" in sweep.error
    (trial,) = db.list_trials(database, sweep_id=sweep_id)
    assert trial.status is db.TrialStatus.ERROR
    assert trial.error == f"the sweep failed: {sweep.error}"
    assert trial.steps == 10  # from its last point
    assert service.recover_jobs(database) == []  # failed is final: nothing more to do


def test_a_job_whose_driver_beats_elsewhere_is_left_alone(database, sweep_id):
    job = Job(database, "sweep", sweep_id, Settings())
    job.set_driver("another-host", 12345)
    job.touch()
    assert service.recover_jobs(database) == []
    assert db.get_sweep(database, sweep_id=sweep_id).status is db.JobStatus.RUNNING
