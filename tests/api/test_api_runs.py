"""/runs routes with FastAPI's test client; no driver runs (see `launched`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

import db
from db._schema import RunRow, SweepRow
from sweeper import service
from sweeper.settings import Settings


@pytest.fixture
def sweep_id(make_spec, record) -> int:
    spec = make_spec(search={"lr": {"min": 2**-7, "max": 2**-1, "points": 7}, "wd": [0.0]})
    return record(spec)


def launch(client, auth, sweep_id, **overrides):
    body = {"sweep_id": sweep_id, "to_width": 64, "steps": 30, "precision": "fp32"} | overrides
    return client.post("/runs", json=body, headers=auth)


def test_launch_run_returns_202_with_the_transferred_config(client, auth, sweep_id, launched):
    response = launch(client, auth, sweep_id, depth=3)
    assert response.status_code == 202, response.text
    run = response.json()
    assert response.headers["location"] == f"/runs/{run['id']}"
    assert run["status"] == "queued" and run["sweep_id"] == sweep_id
    assert run["transfer_id"] is not None
    assert launched == [("run", run["id"])]
    train = run["config"]["train"]
    assert train["model"]["width"] == 64 and train["model"]["depth"] == 3
    assert train["steps"] == 30 and train["precision"] == "fp32"
    assert train["lr"] == pytest.approx(2**-4, rel=0.05)  # the made-up sweep's optimum


def test_list_get_metrics_cancel(client, auth, sweep_id, database):
    ids = [launch(client, auth, sweep_id).json()["id"] for _ in range(3)]
    page = client.get("/runs", params={"limit": 2}).json()
    assert page["total"] == 3 and [r["id"] for r in page["items"]] == ids[::-1][:2]
    assert [r["id"] for r in client.get("/runs?offset=2").json()["items"]] == [ids[0]]

    run_id = ids[0]
    assert client.get(f"/runs/{run_id}").json()["id"] == run_id
    empty = client.get(f"/runs/{run_id}/metrics").json()
    assert empty == {
        "run_id": run_id,
        "status": "queued",
        "step": [],
        "tokens": [],
        "train_loss": [],
        "eval_loss": [],
        "tokens_per_s": [],
        "startup_s": [],
        "time_s": [],
    }
    db.set_run_status(database, run_id=run_id, status=db.JobStatus.RUNNING)
    points = [
        db.MetricPoint(
            step=s, tokens=s * 100, train_loss=5.0 - s / 10, startup_s=0.25, time_s=s / 2
        )
        for s in (1, 2, 3)
    ]
    db.add_metric_points(database, run_id=run_id, points=points)
    metrics = client.get(f"/runs/{run_id}/metrics").json()
    assert metrics["status"] == "running" and metrics["step"] == [1, 2, 3]
    assert metrics["train_loss"] == pytest.approx([4.9, 4.8, 4.7])
    assert metrics["eval_loss"] == [None, None, None]
    assert metrics["startup_s"] == [0.25, 0.25, 0.25]

    cancelled = client.post(f"/runs/{run_id}/cancel", headers=auth)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = client.post(f"/runs/{run_id}/cancel", headers=auth)
    assert again.status_code == 409 and again.json()["error"] == "conflict"


def test_runs_need_the_token_to_change(client, auth, sweep_id, launched):
    run_id = launch(client, auth, sweep_id).json()["id"]
    launched.clear()
    body = {"sweep_id": sweep_id, "to_width": 64, "steps": 30}
    paths = [("/runs", body), (f"/runs/{run_id}/cancel", None), (f"/runs/{run_id}/resume", None)]
    for path, payload in paths:
        assert client.post(path, json=payload).status_code == 401
        wrong = client.post(path, json=payload, headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 403
    assert launched == []
    assert client.get(f"/runs/{run_id}").json()["status"] == "queued"


def test_missing_runs_answer_404(client, auth):
    for method, path in [
        ("GET", "/runs/999"),
        ("GET", "/runs/999/metrics"),
        ("POST", "/runs/999/cancel"),
    ]:
        response = client.request(method, path, headers=auth)
        assert response.status_code == 404, path
        assert response.json()["reason"] == "run 999 not found"
    response = launch(client, auth, 999)
    assert response.status_code == 404 and "sweep 999" in response.json()["reason"]


def test_bad_launches_answer_422_naming_the_field(client, auth, sweep_id, launched):
    cases = [
        ({"to_width": 0}, "to_width"),
        ({"to_width": 100}, "to_width"),  # not a multiple of head_dim
        ({"steps": 0}, "steps"),
        ({"precision": "fp4"}, "precision"),
        ({"colour": "red"}, "colour"),
        ({"data": "/no/such/dataset"}, "data"),
    ]
    for overrides, field in cases:
        response = launch(client, auth, sweep_id, **overrides)
        assert response.status_code == 422, overrides
        assert response.json()["field"] == field, response.json()
    missing = client.post("/runs", json={"sweep_id": sweep_id}, headers=auth).json()
    assert {e["field"] for e in missing["errors"]} == {"to_width", "steps"}
    assert launched == []


def test_a_launch_without_a_sweep_takes_the_latest_completed_one(
    client, auth, make_spec, record, launched
):
    body = {"to_width": 64, "steps": 30}
    assert client.post("/runs", json=body, headers=auth).status_code == 404  # none yet
    spec = make_spec(search={"lr": {"min": 2**-7, "max": 2**-1, "points": 7}, "wd": [0.0]})
    older, latest = record(spec), record(spec)
    record(spec, status=db.JobStatus.RUNNING)  # not completed: not a candidate
    run = client.post("/runs", json=body, headers=auth).json()
    assert older < latest and run["sweep_id"] == latest
    assert run["config"]["launch"]["sweep_id"] == latest and launched == [("run", run["id"])]


def test_resume_a_cancelled_run_but_not_a_completed_one(client, auth, sweep_id, launched):
    run_id = launch(client, auth, sweep_id).json()["id"]
    assert client.post(f"/runs/{run_id}/resume", headers=auth).status_code == 409  # alive
    assert client.post(f"/runs/{run_id}/cancel", headers=auth).json()["status"] == "cancelled"
    resumed = client.post(f"/runs/{run_id}/resume", headers=auth)
    assert resumed.status_code == 202 and resumed.json()["status"] == "queued"
    assert launched == [("run", run_id), ("run", run_id)]
    assert client.post("/runs/999/resume", headers=auth).status_code == 404


def test_resume_of_a_completed_run_is_a_conflict(client, auth, sweep_id, database, launched):
    run_id = launch(client, auth, sweep_id).json()["id"]
    db.set_run_status(database, run_id=run_id, status=db.JobStatus.COMPLETED)
    response = client.post(f"/runs/{run_id}/resume", headers=auth)
    assert response.status_code == 409 and "completed" in response.json()["reason"]
    assert launched == [("run", run_id)]


def kill_drivers(database: db.Database, *jobs: tuple[type[RunRow] | type[SweepRow], int]) -> None:
    """Leave the jobs as a kill -9 of their drivers does: running, with a stale heartbeat."""
    long_ago = datetime.now(UTC) - timedelta(seconds=2 * Settings().stale_s)
    with database.session("making drivers look dead") as s:
        for row, job_id in jobs:
            values = {"status": db.JobStatus.RUNNING, "driver_heartbeat_at": long_ago}
            s.execute(update(row).where(row.id == job_id).values(**values))


def test_service_start_resumes_sweeps_and_runs_whose_driver_died(
    make_client, auth, sweep_id, database, launched, make_spec, record
):
    client = make_client()
    dead, alive = (launch(client, auth, sweep_id).json()["id"] for _ in range(2))
    db.set_run_status(database, run_id=alive, status=db.JobStatus.RUNNING)
    kill_drivers(database, (RunRow, dead), (SweepRow, sweep_id))
    record(make_spec())  # completed: left alone
    launched.clear()
    make_client()  # a service starting
    assert sorted(launched) == [("run", dead), ("sweep", sweep_id)]
    assert db.get_run(database, run_id=dead).status is db.JobStatus.QUEUED
    assert db.get_run(database, run_id=alive).status is db.JobStatus.RUNNING
    assert db.get_sweep(database, sweep_id=sweep_id).status is db.JobStatus.QUEUED


def test_two_services_starting_at_once_resume_an_orphan_once(
    client, auth, sweep_id, database, launched, monkeypatch
):
    run_id = launch(client, auth, sweep_id).json()["id"]
    kill_drivers(database, (RunRow, run_id))
    # Both services list the orphan before either resumes it.
    seen_by_both = db.list_runs(database, status=db.JobStatus.RUNNING)
    monkeypatch.setattr(
        db,
        "list_runs",
        lambda *a, status=None, **k: (
            seen_by_both if status is db.JobStatus.RUNNING else db.Page([], 0)
        ),
    )
    launched.clear()
    assert service.recover_jobs(database) == [f"resumed run {run_id}"]
    assert service.recover_jobs(database) == []  # the second finds it taken
    assert launched == [("run", run_id)]
