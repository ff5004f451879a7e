"""Beyond one machine: a sweep started through the API on a real two-node Ray cluster, its
results in a real PostgreSQL server, and one node killed mid-sweep.

The service runs unchanged: the API and the sweep driver it starts find the cluster in
`RAY_ADDRESS` (with Ray's auth token), the database in `SWEEPER_DB_URL` and Ray's storage in
`SWEEPER_RAY_STORAGE`, a path both nodes see (on one host, any path; across hosts, a
shared volume or a URI), exactly as in docker/compose.yaml.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

import db
from api.main import create_app
from sweeper.settings import DB_URL_VAR, Settings
from sweeper.spec import SweepSpec
from tests.conftest import drivers_of, tiny_sweep

TOKEN = "deploy-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TIMEOUT_S = 180
STEPS, EVAL_INTERVAL = 3000, 250  # ~10 s a trial on this machine: the kill lands mid-trial


def spec_dict(data: str) -> dict[str, Any]:
    """The tiny sweep (2 widths x 2 LRs, depth 2, fp32 on CPU, 1 CPU a trial: one trial on
    each node at a time), with trials long enough to be killed mid-way and LRs that all
    converge."""
    base = tiny_sweep(data)
    return tiny_sweep(
        data,
        name="deploy-two-nodes",
        train=base["train"] | {"steps": STEPS, "eval_interval": EVAL_INTERVAL},
        search=base["search"] | {"lr": {"min": 2**-6, "max": 2**-4, "points": 2}},
    )


def wait_for(
    predicate: Callable[[], bool],
    what: str,
    timeout: float = TIMEOUT_S,
    state: Callable[[], str] = str,
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{state()}")
        time.sleep(0.5)


def driver_log(state_home: Path) -> str:
    logs = sorted(state_home.rglob("sweep-*.log"))
    return "\n".join(f"--- {log}\n{log.read_text(errors='replace')[-6000:]}" for log in logs)


@pytest.fixture
def database_url(postgres_server) -> Iterator[str]:
    with postgres_server.fresh_database() as url:
        yield url
        for proc in drivers_of(url):  # never leave a driver behind a failed test
            proc.kill()


@pytest.fixture
def api(two_node_cluster, database_url, tmp_path, monkeypatch) -> Iterator[TestClient]:
    """The API over PostgreSQL and the cluster, configured by environment only."""
    env = two_node_cluster.client_env | {
        DB_URL_VAR: database_url,
        "SWEEPER_RAY_STORAGE": str(tmp_path / "ray-storage"),
        "SWEEPER_DATA_DIR": str(tmp_path / "data"),
        "SWEEPER_API_TOKEN": TOKEN,
        "SWEEPER_API_HOST": "127.0.0.1",
        "XDG_STATE_HOME": str(tmp_path / "state"),  # the drivers' logs
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SWEEPER_RAY_ADDRESS", raising=False)
    with TestClient(create_app(Settings(curves_worker=False))) as client:
        yield client


@pytest.mark.slow
def test_sweep_runs_on_both_nodes_and_survives_losing_one(
    two_node_cluster, api, database_url, shakespeare, tmp_path
):
    head, node = two_node_cluster.head, two_node_cluster.workers[0]
    spec = spec_dict(shakespeare)
    plan = SweepSpec.model_validate(spec).plan()
    # docker/compose.yaml's health check of the Ray nodes, on this cluster, with its token.
    health = subprocess.run(
        ["ray", "health-check", f"--address={two_node_cluster.address}"],
        env=os.environ | two_node_cluster.client_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert health.returncode == 0, health.stderr
    database = db.connect(database_url)
    try:
        response = api.post("/sweeps", json=spec, headers=AUTH)
        assert response.status_code == 202, response.text
        sweep_id = response.json()["id"]

        def trials() -> list[db.Trial]:
            return db.list_trials(database, sweep_id=sweep_id)

        def on_node1() -> list[db.Trial]:
            """The running trials whose actor lives on node1: a Tune trial's actor works in
            its trial's directory, whose name holds the trial id."""
            cwds = node.worker_dirs()
            return [
                t
                for t in trials()
                if t.status is db.TrialStatus.RUNNING
                and t.ray_trial_id
                and any(t.ray_trial_id in cwd for cwd in cwds)
            ]

        def driver_alive() -> None:
            """Fail at once, saying so, when the sweep's driver is gone before its end (as
            when another test run on this machine kills every `sweeper.driver` it sees)."""
            if not drivers_of(database_url):
                sweep = db.get_sweep(database, sweep_id=sweep_id)
                if not sweep.status.finished:
                    pytest.fail(f"the sweep's driver died, sweep {sweep.status}\n{state()}")

        def mid_trial_on_node1() -> bool:
            """A trial has ended on node1, and the one it runs now is past its first point
            and far from its end."""
            driver_alive()
            if not any(t.status.finished and t.node_id == node.node_id for t in trials()):
                return False
            there = on_node1()  # read before the curves, which then hold each of its trials
            curves = db.get_curves(database, sweep_id=sweep_id)
            steps = [max((p.step for p in curves[t.id]), default=0) for t in there]
            return len(steps) == 1 and 0 < steps[0] <= STEPS // 2

        def state() -> str:
            listed = trials()
            curves = db.get_curves(database, sweep_id=sweep_id)
            rows = [
                f"{t.key} {t.status} node={t.node_id} steps={[p.step for p in curves[t.id]]}"
                for t in listed
            ]
            nodes = f"head={head.node_id} node1={node.node_id}"
            return "\n".join([nodes, *rows, driver_log(tmp_path / "state")])

        wait_for(mid_trial_on_node1, "a trial mid-way on node1, after one ended there", state=state)
        (lost,) = on_node1()
        running = [t for t in trials() if t.status is db.TrialStatus.RUNNING]
        curves = db.get_curves(database, sweep_id=sweep_id)
        before_kill = {t.key: {(p.step, p.time_s) for p in curves[t.id]} for t in running}
        node.kill()
        killed_at = time.monotonic()

        def ended() -> bool:
            driver_alive()
            summary = api.get(f"/sweeps/{sweep_id}", headers=AUTH).json()
            return summary["status"] in ("completed", "failed", "cancelled")

        wait_for(ended, "the sweep to end on the head alone", state=state)
        ended_after_s = time.monotonic() - killed_at
        detail = api.get(f"/sweeps/{sweep_id}", headers=AUTH).json()
        assert detail["status"] == "completed", detail["error"]
        assert detail["planned"] == detail["finished"] == len(plan) == 4
        assert node.node_id not in two_node_cluster.alive_node_ids()

        # Every planned trial once, each completed, on one of the two nodes; both used.
        listed = api.get(f"/sweeps/{sweep_id}/trials", headers=AUTH).json()
        assert listed["total"] == len(plan)
        by_key = {t["key"]: t for t in listed["items"]}
        assert sorted(by_key) == sorted(p.key for p in plan)
        assert all(t["status"] == "completed" and t["error"] is None for t in by_key.values())
        assert {t["node_id"] for t in by_key.values()} == {head.node_id, node.node_id}

        # The trial that was on the killed node ran again from step 0 on the head; the one
        # on the head went on. Neither left points of another attempt behind.
        curves = db.get_curves(database, sweep_id=sweep_id)
        expected_steps = list(range(EVAL_INTERVAL, STEPS + 1, EVAL_INTERVAL))
        assert lost.key in before_kill
        for key, points_before in before_kill.items():
            trial = next(t for t in trials() if t.key == key)
            assert trial.node_id == head.node_id, trial
            points_after = {(p.step, p.time_s) for p in curves[trial.id]}
            if key == lost.key:  # re-run: no point of the lost attempt is left
                assert points_before and not points_before & points_after
            else:  # went on: every point it had is still there
                assert points_before <= points_after
        for trial in trials():
            assert [p.step for p in curves[trial.id]] == expected_steps, trial.key

        # The results are PostgreSQL's rows, read back without sweeper's code.
        with psycopg.connect(**_libpq_params(database_url)) as conn:
            counts = conn.execute(
                "SELECT count(DISTINCT t.id), count(p.step), count(DISTINCT (t.id, p.step))"
                " FROM sweeper_trials t JOIN sweeper_metric_points p ON p.trial_id = t.id"
                " WHERE t.sweep_id = %s",
                (sweep_id,),
            ).fetchone()
        assert counts == (
            len(plan),
            len(plan) * len(expected_steps),
            len(plan) * len(expected_steps),
        )

        # Tune's experiment went to the storage both nodes share.
        assert list(Path(tmp_path / "ray-storage").glob(f"sweep-{sweep_id}-*"))
        print(f"the sweep ended {ended_after_s:.0f} s after the kill")
    finally:
        database.dispose()


def _libpq_params(url: str) -> dict[str, Any]:
    parsed = make_url(url)
    return {
        "dbname": parsed.database,
        "user": parsed.username,
        "host": parsed.query.get("host") or parsed.host,
    }
