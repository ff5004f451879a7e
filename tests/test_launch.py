"""Transfer from a real sweep and the full-size launch on Ray Train (2 CPU workers, gloo).

The module's sweep and runs join one real Ray cluster (`ray start`, 2 CPUs), as drivers join
a deployment's: each driver would otherwise start a local cluster and stop it again, ~11 s
of every run. A local cluster's drivers are the README job's (tests/test_demo.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest
import ray

import db
from models.width_rules import group_rule
from sweeper import service
from sweeper.launch import RESTORED_CURVE, RunRecorder
from sweeper.launch_request import LaunchRequest
from sweeper.settings import DB_URL_VAR, Settings
from tests.conftest import drivers_of
from tests.deploy.conftest import RayCluster, ray_cluster
from tests.test_sweep_engine import make_spec, run_to_end, wait_for

# The steps of a run that a test interrupts once it has a checkpoint, long enough that the
# interruption lands mid-run. A run reports every 10 steps, each report waiting for Ray
# Train's poll (every 0.2 s: tests/conftest.py), so 400 steps last 10 s or more, time for a
# kill; 1000 last 25 s or more, time for a cancel from the CLI (a process that takes ~5 s to
# start, far more under load).
KILLED_STEPS = 400
CANCELLED_STEPS = 1000


def every_point(steps: int) -> list[int]:
    """The steps of a whole run's points (the tiny sweep's eval_interval)."""
    return list(range(10, steps + 1, 10))


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    with ray_cluster(workers=0, cpus=2) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def swept(tmp_path_factory, shakespeare, cluster):
    """A finished tiny µS sweep (2 widths × 4 LRs) in its own SQLite file, and the
    environment of its drivers: that file, and the module's cluster."""
    tmp = tmp_path_factory.mktemp("launch")
    env = cluster.client_env | {
        DB_URL_VAR: f"sqlite:///{tmp / 'sweeper.db'}",
        "XDG_STATE_HOME": str(tmp / "state"),
        "SWEEPER_RAY_STORAGE": str(tmp / "ray_results"),
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        database = db.connect(env[DB_URL_VAR])
        spec = make_spec(shakespeare, search={"lr": {"min": 2**-8, "max": 2**-1, "points": 4}})
        sweep = service.start_sweep(database, spec)
        assert run_to_end(database, sweep.id).sweep.status is db.JobStatus.COMPLETED
        yield database, sweep.id, env
    database.dispose()


def cli(env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sweeper", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def test_transfer_cli_applies_the_width_rules(swept):
    database, sweep_id, env = swept
    out = cli(env, "transfer", "--to-width", "1024", "--json")  # latest completed sweep
    assert out.returncode == 0, out.stderr
    transferred = json.loads(out.stdout)
    result = transferred["result"]
    assert transferred["to_width"] == result["to_width"] == 1024 and len(result["widths"]) == 2
    model = service.sweep_progress(database, sweep_id).spec.train.model
    for group in result["groups"]:
        rule = group_rule(
            group["group"],
            parametrization="mus",
            fan_in=group["fan_in"],
            base_lr=result["base_lr"],
            base_wd=result["base_wd"],
            base_width=model.base_width,
        )
        assert group["lr"] == pytest.approx(rule.lr) and group["wd"] == rule.wd
    stored = db.list_transfers(database, sweep_id=sweep_id)
    assert [t.id for t in stored] == [transferred["id"]]
    assert stored[0].result["base_lr"] == pytest.approx(result["base_lr"])
    bad = cli(env, "transfer", "--to-width", "100")
    assert bad.returncode == 2 and "--to-width" in bad.stderr
    # The target's tokens: 2e9 is far beyond the one horizon swept, which the result says.
    far = cli(env, "transfer", "--to-width", "1024", "--to-tokens", "2e9", "--json")
    assert far.returncode == 0, far.stderr
    assert json.loads(far.stdout)["result"]["to_tokens"] == 2 * 10**9
    assert any("token horizon" in w for w in json.loads(far.stdout)["result"]["warnings"])
    for text in ("2.5", "lots", "0"):
        bad = cli(env, "transfer", "--to-width", "1024", "--to-tokens", text)
        assert bad.returncode == 2 and "--to-tokens" in bad.stderr, bad.stderr


def _train_workers(cluster: RayCluster) -> list[psutil.Process]:
    """The Ray Train workers on the module's cluster (its one run at a time)."""
    return [
        p for p in cluster.head.processes() if any("RayTrainWorker" in part for part in _cmdline(p))
    ]


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:  # it ended while the tree was read
        return []


def test_a_resumed_run_stores_the_points_its_checkpoint_holds_and_the_driver_never_did(
    database,
):
    """A driver killed after Ray persisted a checkpoint but before its recorder stored that
    report's point: the resumed run's first report carries the checkpoint's curve, and the
    recorder stores what is missing, each step once."""
    run_id = db.create_run(database, name="resumed", config={"train": {"steps": 40}})
    recorder = RunRecorder(database, run_id, Settings())

    def point(step: int) -> dict[str, float]:
        return {"step": step, "tokens": step, "train_loss": 3.0, "eval_loss": 3.0,
                "tokens_per_s": 1.0, "time_s": float(step), "startup_s": 0.5}  # fmt: skip

    recorder.after_report(None, [point(10)], None)  # step 20's point was never stored
    first = point(30) | {"resumed_from": 20, RESTORED_CURVE: [point(10), point(20)]}
    recorder.after_report(None, [first], None)
    recorder.after_report(None, [point(40) | {"resumed_from": 20}], None)
    assert [p.step for p in db.get_run_curve(database, run_id=run_id)] == [10, 20, 30, 40]
    assert db.get_run(database, run_id=run_id).resumed_from_step == 20


def test_launch_two_workers_resumes_after_a_worker_dies(swept, cluster):
    database, sweep_id, env = swept
    request = LaunchRequest(
        sweep_id=sweep_id, to_width=64, steps=KILLED_STEPS, workers=2, precision="fp32"
    )
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        run = service.launch_run(database, request)
    assert run.transfer_id is not None and run.config["train"]["model"]["width"] == 64
    wait_for(
        lambda: db.get_run(database, run_id=run.id).checkpoint_path is not None, "a checkpoint"
    )
    workers = _train_workers(cluster)
    assert len(workers) == 2
    workers[0].send_signal(signal.SIGKILL)
    wait_for(lambda: db.get_run(database, run_id=run.id).status.finished, "the run to end")
    finished = db.get_run(database, run_id=run.id)
    assert finished.status is db.JobStatus.COMPLETED, finished.error
    assert finished.restarts == 1 and finished.resumed_from_step >= 10
    curve = db.get_run_curve(database, run_id=run.id)
    assert [p.step for p in curve] == every_point(KILLED_STEPS)  # whole, and stored once
    assert curve[-1].eval_loss < curve[0].eval_loss
    listed = json.loads(cli(env, "run", "list", "--json").stdout)
    assert [r["id"] for r in listed["items"]] == [run.id]
    done = cli(env, "run", "cancel", str(run.id))
    assert done.returncode == 1 and "nothing to cancel" in done.stderr


def test_a_run_whose_driver_dies_resumes_from_its_checkpoint(swept, monkeypatch):
    database, sweep_id, env = swept
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    request = LaunchRequest(sweep_id=sweep_id, to_width=64, steps=KILLED_STEPS, precision="fp32")
    run = service.launch_run(database, request)
    wait_for(
        lambda: db.get_run(database, run_id=run.id).checkpoint_path is not None, "a checkpoint"
    )
    (driver,) = drivers_of(database.url)
    driver.send_signal(signal.SIGKILL)
    driver.wait(30)
    assert db.get_run(database, run_id=run.id).status is db.JobStatus.RUNNING
    assert service.run_progress(database, run.id).stale  # its process is seen gone at once
    assert service.resume_run(database, run.id).status is db.JobStatus.QUEUED
    wait_for(lambda: db.get_run(database, run_id=run.id).status.finished, "the resumed run")
    finished = db.get_run(database, run_id=run.id)
    assert finished.status is db.JobStatus.COMPLETED, finished.error
    assert finished.restarts == 1 and finished.resumed_from_step >= 10
    curve = db.get_run_curve(database, run_id=run.id)
    assert [p.step for p in curve] == every_point(KILLED_STEPS)  # whole, and stored once
    again = cli(env, "run", "resume", str(run.id))
    assert again.returncode == 1 and "nothing to resume" in again.stderr


def test_a_run_waiting_for_its_workers_resources_waits_and_cancels_promptly(
    swept, cluster, monkeypatch
):
    """A feasible run on a busy cluster waits for its workers (Ray Train alone gives up after
    60 s and counts that as a failure), and a cancel stops its driver although no worker
    ever reports: within the grace of one stale driver (here 15 heartbeats of 0.5 s)."""
    database, sweep_id, env = swept
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in cluster.client_env:  # the busy cluster is one of its own, started here
        monkeypatch.delenv(key)
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        held = ray.util.placement_group([{"CPU": 1}])  # the cluster's one CPU
        ray.get(held.ready())
        monkeypatch.setenv("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
        monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "5")  # the driver overrides
        monkeypatch.setenv("SWEEPER_HEARTBEAT_S", "0.5")
        request = LaunchRequest(sweep_id=sweep_id, to_width=64, steps=20, precision="fp32")
        run = service.launch_run(database, request)
        wait_for(lambda: drivers_of(database.url), "the run's driver")
        time.sleep(25)  # five of Ray Train's default start timeouts, as the override is 5 s
        waiting = db.get_run(database, run_id=run.id)
        assert waiting.status is db.JobStatus.RUNNING, waiting.error
        assert not db.get_run_curve(database, run_id=run.id)
        service.cancel_run(database, run.id)
        cancelled_at = time.monotonic()
        wait_for(lambda: not drivers_of(database.url), "the cancelled run's driver to stop", 60)
        assert time.monotonic() - cancelled_at < 20
        assert db.get_run(database, run_id=run.id).status is db.JobStatus.CANCELLED
    finally:
        ray.shutdown()


def test_cancel_then_resume_with_the_cli_continues_from_the_checkpoint(swept):
    database, sweep_id, env = swept
    steps = str(CANCELLED_STEPS)
    started = cli(env, "launch", "--to-width", "64", "--steps", steps, "--precision", "fp32")
    assert started.returncode == 0, started.stderr
    run_id = int(started.stdout)
    assert db.get_run(database, run_id=run_id).sweep_id == sweep_id  # the latest completed
    wait_for(lambda: db.get_run(database, run_id=run_id).checkpoint_path is not None, "a ckpt")
    assert cli(env, "run", "cancel", str(run_id)).returncode == 0
    wait_for(lambda: not drivers_of(database.url), "the cancelled run's driver to stop")
    stopped_at = db.get_run_curve(database, run_id=run_id)[-1].step
    assert db.get_run(database, run_id=run_id).status is db.JobStatus.CANCELLED

    resumed = cli(env, "run", "resume", str(run_id), "--wait", "--json")
    assert resumed.returncode == 0, resumed.stderr
    run = json.loads(resumed.stdout)
    assert run["status"] == "completed" and run["restarts"] == 1
    assert 10 <= run["resumed_from_step"] <= stopped_at
    metrics = json.loads(cli(env, "run", "metrics", str(run_id), "--json").stdout)
    assert metrics["step"] == every_point(CANCELLED_STEPS)


def test_fsdp_and_ddp_train_the_same_model(swept):
    """FSDP2 (each block sharded over 2 CPU workers, gloo) matches DDP step for step."""
    database, sweep_id, env = swept
    curves = {}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        for strategy in ("ddp", "fsdp"):
            request = LaunchRequest(
                sweep_id=sweep_id,
                to_width=64,
                steps=20,
                workers=2,
                precision="fp32",
                strategy=strategy,
            )
            run = service.launch_run(database, request)
            wait_for(
                lambda run=run: db.get_run(database, run_id=run.id).status.finished,
                f"the {strategy} run",
            )
            assert db.get_run(database, run_id=run.id).status is db.JobStatus.COMPLETED
            curves[strategy] = [p.eval_loss for p in db.get_run_curve(database, run_id=run.id)]
    assert len(curves["fsdp"]) == 2
    assert curves["fsdp"] == pytest.approx(curves["ddp"], rel=1e-4)
