"""A driver always leaves its job in a state a user can act on: real driver processes, real
Ray clusters (each in a temp dir of its own: the machine's /tmp/ray is never touched), a
real SQLite file, the CLI as a user runs it.

Each test is one way a job used to hang or end without a word: a stale Ray address file, an
unreachable address, SIGTERM, an error inside `ensure_ray` or in the stored spec, a request
for more than the cluster holds, a trial out of memory, a driver gone under `--wait`.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest

import db
from sweeper import service
from sweeper.cluster import local_node
from sweeper.jobs import traceback_tail
from sweeper.settings import Settings
from sweeper.spec import SweepSpec
from tests.conftest import driver_log, drivers_of, ray_processes, tiny_sweep
from tests.test_sweep_engine import TIMEOUT_S, make_spec, run_to_end, wait_for


def cli(*args: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sweeper", *args], capture_output=True, text=True, timeout=timeout
    )


def spec_file(tmp_path: Path, spec: SweepSpec | dict[str, object]) -> str:
    path = tmp_path / "spec.json"
    text = spec.model_dump_json() if isinstance(spec, SweepSpec) else json.dumps(spec)
    path.write_text(text)
    return str(path)


def wait_until_stopped(database: db.Database, root: Path) -> None:
    """The driver exits, and the local cluster it started under ``root`` stops with it."""
    wait_for(lambda: not drivers_of(database.url), "the driver to exit", timeout=60)
    wait_for(lambda: not ray_processes(root), "the driver's Ray cluster to stop", timeout=60)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nobody listens once the socket is closed


def test_a_stale_ray_address_file_is_never_joined(database, shakespeare, ray_tmp, tmp_path):
    """A cluster killed without `ray stop` leaves its address behind; with no address
    configured, ray.init() joined it and retried the dead GCS for ever."""
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:59999")
    spec = make_spec(shakespeare, search={"lr": {"min": 2**-6, "max": 2**-2, "points": 1}})
    started = time.monotonic()
    out = cli("sweep", "start", spec_file(tmp_path, spec), "--wait", "--json")
    assert out.returncode == 0, out.stderr + driver_log(tmp_path)
    payload = json.loads(out.stdout)
    assert payload["status"] == "completed" and payload["finished"] == payload["planned"] == 2
    print(f"the sweep completed in {time.monotonic() - started:.0f} s on a cluster of its own")
    assert (ray_tmp / "ray" / "ray_current_cluster").read_text() == "127.0.0.1:59999"
    wait_until_stopped(database, ray_tmp)


def test_an_unreachable_ray_address_fails_the_sweep_in_bounded_time(
    database, shakespeare, tmp_path, monkeypatch
):
    address = f"127.0.0.1:{closed_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    monkeypatch.setenv("SWEEPER_RAY_CONNECT_TIMEOUT_S", "3")
    started = time.monotonic()
    out = cli("sweep", "start", spec_file(tmp_path, make_spec(shakespeare)), "--wait", timeout=120)
    took = time.monotonic() - started
    assert out.returncode == 1, out.stdout + out.stderr
    (sweep,) = db.list_sweeps(database).items
    assert sweep.status is db.JobStatus.FAILED
    assert sweep.error is not None and "\n" not in sweep.error
    assert sweep.error.startswith("RayUnreachable: no Ray cluster answers at " + address)
    assert f"sweep {sweep.id} ended failed: RayUnreachable" in out.stderr
    assert took < 60, took  # the 3 s wait, and the driver's and the CLI's start
    assert Settings.model_fields["ray_connect_timeout_s"].default == 30.0  # the default
    print(f"failed {took:.0f} s after the start (connect timeout 3 s)")


def test_sigterm_stops_the_driver_which_records_where_it_stopped(database, shakespeare, ray_tmp):
    spec = make_spec(
        shakespeare,
        train=make_spec(shakespeare).train.model_copy(update={"steps": 5000, "eval_interval": 5}),
    )
    sweep = service.start_sweep(database, spec)
    wait_for(lambda: any(db.get_curves(database, sweep_id=sweep.id).values()), "a point")
    (driver,) = drivers_of(database.url)
    stopped_at = time.monotonic()
    driver.send_signal(signal.SIGTERM)
    assert driver.wait(60) == 128 + signal.SIGTERM
    took = time.monotonic() - stopped_at
    progress = service.sweep_progress(database, sweep.id)
    assert progress.sweep.status is db.JobStatus.FAILED
    assert progress.sweep.error == (
        "the driver was stopped by SIGTERM after 0 of 4 trials finished; resume to continue"
    )
    assert progress.trials and all(t.status is db.TrialStatus.ERROR for t in progress.trials)
    assert all("SIGTERM" in (t.error or "") for t in progress.trials)
    assert sum(len(c) for c in db.get_curves(database, sweep_id=sweep.id).values()) > 0
    assert not progress.stale
    print(f"the driver recorded it and exited {took:.1f} s after SIGTERM")
    wait_until_stopped(database, ray_tmp)


def test_an_error_inside_ensure_ray_fails_the_sweep_with_its_reason(
    database, shakespeare, tmp_path, monkeypatch
):
    not_a_dir = tmp_path / "not-a-directory"
    not_a_dir.write_text("Ray cannot make its temp dir under a file")
    monkeypatch.setenv("RAY_TMPDIR", str(not_a_dir))
    sweep = service.start_sweep(database, make_spec(shakespeare))
    progress = run_to_end(database, sweep.id)
    assert progress.sweep.status is db.JobStatus.FAILED
    error = progress.sweep.error or ""
    assert "\n" not in error and str(not_a_dir) in error, error
    assert "Traceback" in driver_log(tmp_path)  # the traceback went to the driver's log
    wait_for(lambda: not drivers_of(database.url), "the driver to exit", timeout=60)
    print(error)


def test_a_stored_spec_that_no_longer_validates_fails_the_sweep(database, shakespeare, tmp_path):
    """Its data file is gone by the time the driver reads the spec (stored as it was)."""
    missing = str(tmp_path / "removed.txt")
    spec = tiny_sweep(shakespeare, train=tiny_sweep(shakespeare)["train"] | {"data": missing})
    sweep_id = db.create_sweep(database, name="gone", spec=spec)
    service.launch_driver(database, "sweep", sweep_id)
    progress = run_to_end(database, sweep_id)
    assert progress.sweep.status is db.JobStatus.FAILED
    assert progress.sweep.error == (
        "ValidationError: SweepSpec is invalid: train: Value error, data: no such file or"
        f" directory {missing!r} (or use 'stdlib')"
    )


def test_a_trial_out_of_memory_is_an_error_with_its_message_and_the_sweep_goes_on(
    database, shakespeare
):
    """A width whose embedding alone needs 1 PiB: the allocation fails at once on any
    machine, as a GPU's would with CUDA out of memory. The other width's trials complete."""
    huge = 2**40
    one_lr = {"lr": {"min": 2**-6, "max": 2**-2, "points": 1}, "wd": [0.0]}
    spec = SweepSpec.model_validate(tiny_sweep(shakespeare, widths=[16, huge], search=one_lr))
    sweep = service.start_sweep(database, spec)
    progress = run_to_end(database, sweep.id)
    small, large = sorted(progress.trials, key=lambda t: t.width)
    assert small.status is db.TrialStatus.COMPLETED
    assert large.width == huge and large.status is db.TrialStatus.ERROR
    assert large.error is not None and "\n" not in large.error
    assert "can't allocate memory" in large.error, large.error
    assert progress.sweep.status is db.JobStatus.FAILED
    error = progress.sweep.error or ""
    assert error.startswith("1 of 2 trials did not finish: w1099511627776-") and (
        "can't allocate memory" in error and error.endswith("; resume to re-run them")
    ), error


def test_an_error_whose_message_runs_on_is_recorded_by_its_first_line():
    """A CUDA error's message ends with hints (CUDA_LAUNCH_BLOCKING, TORCH_USE_CUDA_DSA);
    the recorded error is the line that names it, as Ray's formatted traceback holds it."""

    def fail() -> None:
        raise RuntimeError(
            "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"
            "\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1"
            "\nCompile with `TORCH_USE_CUDA_DSA` to enable device-side assertions."
        )

    try:
        try:
            fail()
        except RuntimeError as cause:
            raise ValueError("the run failed:\nsee the log") from cause
    except ValueError as error:
        chained = "".join(traceback.format_exception(error))
    try:
        fail()
    except RuntimeError as error:
        single = "".join(traceback.format_exception(error))
    assert traceback_tail(single) == "RuntimeError: CUDA error: out of memory"
    assert traceback_tail(chained) == "ValueError: the run failed:"


def test_wait_exits_when_the_driver_is_gone_and_nothing_resumes_it(
    database, shakespeare, tmp_path, monkeypatch
):
    # Beats every 0.5 s, gone after 4 missed: --wait gives a watchdog 2 s to resume it.
    monkeypatch.setenv("SWEEPER_HEARTBEAT_S", "0.5")
    monkeypatch.setenv("SWEEPER_STALE_BEATS", "4")
    spec = make_spec(
        shakespeare,
        train=make_spec(shakespeare).train.model_copy(update={"steps": 5000, "eval_interval": 5}),
    )
    waiting = subprocess.Popen(
        [sys.executable, "-m", "sweeper", "sweep", "start", spec_file(tmp_path, spec), "--wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: db.list_sweeps(database).total == 1, "the sweep")
        (sweep,) = db.list_sweeps(database).items
        wait_for(lambda: any(db.get_curves(database, sweep_id=sweep.id).values()), "a point")
        (driver,) = drivers_of(database.url)
        driver.kill()
        killed_at = time.monotonic()
        _, err = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    took = time.monotonic() - killed_at
    assert waiting.returncode == 1, err
    message = err.strip().splitlines()[-1]
    assert f"sweep {sweep.id} is running but its driver is gone" in message
    assert f"`sweeper sweep resume {sweep.id}` continues it" in message
    assert took < 30, took
    print(f"--wait gave up {took:.1f} s after the kill")


@pytest.mark.parametrize("resource", ["gpu", "cpu"])
def test_a_sweep_asking_for_more_than_this_machine_holds_is_refused(
    database, shakespeare, tmp_path, resource
):
    local = local_node()
    if resource == "gpu" and local.gpu >= 1:
        pytest.skip("this machine has a GPU")
    asked = {"gpu": {"gpu": 1}, "cpu": {"cpu": local.cpu + 1}}[resource]
    out = cli("sweep", "start", spec_file(tmp_path, tiny_sweep(shakespeare, resources=asked)))
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert f"resources.{resource}: a trial asks for" in line and "the largest node has" in line
    assert db.list_sweeps(database).total == 0  # nothing queued, no driver
    if resource == "cpu":  # and a run whose workers could never all start
        launch = cli("launch", "--to-width", "64", "--steps", "10", "--workers", "64")
        assert launch.returncode == 2 and "--workers" in launch.stderr
        assert len(launch.stderr.strip().splitlines()) == 1


def test_on_a_configured_cluster_the_driver_checks_resources_and_fails_at_once(
    database, shakespeare, monkeypatch
):
    """A cluster of one 1-CPU node and trials of 2 CPUs: the driver joins it (the address
    is reachable), finds no node that could run a trial, and fails instead of waiting."""
    from tests.deploy.conftest import ray_cluster

    with ray_cluster(workers=0) as cluster:
        for key, value in cluster.client_env.items():
            monkeypatch.setenv(key, value)
        spec = SweepSpec.model_validate(tiny_sweep(shakespeare, resources={"cpu": 2}))
        sweep = service.start_sweep(database, spec)  # remote: checked by the driver
        progress = run_to_end(database, sweep.id)
    assert progress.sweep.status is db.JobStatus.FAILED
    assert progress.sweep.error == (
        "NotEnoughResources: resources.cpu: a trial asks for 2 CPUs; the largest node has 1"
        " (1 node(s) of 1 CPUs, 0 GPUs)"
    )
    assert progress.trials == []
