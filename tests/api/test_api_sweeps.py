"""/sweeps routes with FastAPI's test client; no driver runs (see `launched`)."""

from __future__ import annotations

import pytest

import db


def test_start_sweep_returns_202_and_starts_a_driver(client, auth, make_spec, launched, database):
    response = client.post("/sweeps", json=make_spec(), headers=auth)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and body["name"] == "api-test"
    assert response.headers["location"] == f"/sweeps/{body['id']}"
    assert launched == [("sweep", body["id"])]
    assert db.get_sweep(database, sweep_id=body["id"]).spec["widths"] == [16, 32]


def test_mutating_routes_need_the_token(client, make_spec, record, launched):
    sweep_id = record(make_spec(), status=db.JobStatus.RUNNING)
    routes = [
        ("/sweeps", make_spec()),
        (f"/sweeps/{sweep_id}/cancel", None),
        (f"/sweeps/{sweep_id}/resume", None),
        (f"/sweeps/{sweep_id}/transfer", {"to_width": 256}),
    ]
    for path, body in routes:
        missing = client.post(path, json=body)
        assert missing.status_code == 401, path
        assert missing.headers["www-authenticate"] == "Bearer"
        assert missing.json()["error"] == "unauthorized"
        wrong = client.post(path, json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403, path
        assert wrong.json()["error"] == "forbidden"
        basic = client.post(path, json=body, headers={"Authorization": "Basic dXNlcjpwdw=="})
        assert basic.status_code == 401, path
    assert launched == []
    assert db.list_sweeps(client.app.state.database).total == 1


def test_bad_specs_answer_422_naming_the_field(client, auth, make_spec, launched):
    cases = [
        (make_spec(widths=[16, 20]), "widths", "multiple of train.model.head_dim"),
        (make_spec(widths=[]), "widths", "at least 1"),
        (make_spec(search={"lr": {"min": 0.1, "max": 0.01}}), "search.lr", "must be below max"),
        (make_spec(resources={"gpu": 1.5}), "resources.gpu", "fraction"),
        (make_spec(name=""), "name", "at least 1 character"),
        (make_spec(colour="red"), "colour", "Extra inputs"),
    ]
    for spec, field, reason in cases:
        response = client.post("/sweeps", json=spec, headers=auth)
        assert response.status_code == 422, spec
        body = response.json()
        assert body["error"] == "invalid"
        assert body["field"] == field, body
        assert reason in body["errors"][0]["reason"], body
        assert body["reason"].startswith(f"{field}: ")

    spec = make_spec()
    spec["train"] = spec["train"] | {"steps": "many"}
    body = client.post("/sweeps", json=spec, headers=auth).json()
    assert body["field"] == "train.steps"

    response = client.post(
        "/sweeps", content=b"{not json", headers=auth | {"Content-Type": "application/json"}
    )
    assert response.status_code == 422 and response.json()["field"] == "body"
    assert launched == []


def test_list_sweeps_is_paginated_newest_first(client, make_spec, record):
    ids = [record(make_spec(name=f"s{i}")) for i in range(3)]
    first = client.get("/sweeps", params={"limit": 2}).json()
    assert first["total"] == 3 and first["offset"] == 0 and first["limit"] == 2
    assert [s["id"] for s in first["items"]] == ids[::-1][:2]
    second = client.get("/sweeps", params={"offset": 2, "limit": 2}).json()
    assert [s["id"] for s in second["items"]] == [ids[0]]
    item = first["items"][0]
    assert item["status"] == "completed" and item["planned"] == item["finished"] == 4
    assert item["widths"] == [16, 32]
    for bad in ({"limit": 0}, {"offset": -1}, {"limit": 501}):
        response = client.get("/sweeps", params=bad)
        assert response.status_code == 422 and response.json()["field"] == next(iter(bad))


def test_get_sweep_shows_progress_and_best_per_width(client, make_spec, record):
    spec = make_spec(search={"lr": {"min": 2**-6, "max": 2**-2, "points": 3}, "wd": [0.0]})
    sweep_id = record(spec)
    body = client.get(f"/sweeps/{sweep_id}").json()
    assert body["id"] == sweep_id and body["status"] == "completed"
    assert body["planned"] == body["finished"] == 6
    assert body["spec"]["widths"] == [16, 32]
    assert set(body["best"]) == {"16", "32"}
    assert all(t["params"]["lr"] == 2**-4 for t in body["best"].values())


def test_missing_sweeps_answer_404_as_json(client, auth):
    for method, path in [
        ("GET", "/sweeps/999"),
        ("GET", "/sweeps/999/trials"),
        ("GET", "/sweeps/999/curves"),
        ("POST", "/sweeps/999/cancel"),
        ("POST", "/sweeps/999/resume"),
    ]:
        response = client.request(method, path, headers=auth)
        assert response.status_code == 404, path
        assert response.json() == {
            "error": "not_found",
            "reason": "sweep 999 not found",
            "field": None,
            "errors": [],
        }
    response = client.post("/sweeps/999/transfer", json={"to_width": 256}, headers=auth)
    assert response.status_code == 404
    response = client.get("/sweeps/abc")
    assert response.status_code == 422 and response.json()["field"] == "sweep_id"
    assert client.get("/nowhere").json()["error"] == "not_found"


def test_trials_in_start_order_and_paginated(client, make_spec, record):
    sweep_id = record(make_spec())
    body = client.get(f"/sweeps/{sweep_id}/trials").json()
    assert body["total"] == 4
    keys = [t["key"] for t in body["items"]]
    assert keys == ["w16-lr0.015625-wd0", "w16-lr0.25-wd0", "w32-lr0.015625-wd0", "w32-lr0.25-wd0"]
    trial = body["items"][0]
    assert trial["status"] == "completed" and trial["steps"] == 20
    assert trial["tokens_per_s"] == 1000.0 and trial["startup_s"] == 1.5
    assert trial["final_eval_loss"] is not None
    page = client.get(f"/sweeps/{sweep_id}/trials", params={"offset": 3, "limit": 5}).json()
    assert [t["key"] for t in page["items"]] == keys[3:] and page["total"] == 4


def test_curves_give_lr_curves_per_width_and_training_curves(client, make_spec, record):
    spec = make_spec(search={"lr": {"min": 2**-8, "max": 2**0, "points": 5}, "wd": [0.0, 0.1]})
    sweep_id = record(spec, diverge_above=0.5)
    body = client.get(f"/sweeps/{sweep_id}/curves").json()
    assert body["sweep_id"] == sweep_id and body["status"] == "completed"
    assert body["planned"] == body["finished"] == 20
    assert [w["width"] for w in body["widths"]] == [16, 32]
    for width in body["widths"]:
        assert len(width["points"]) == 10  # 5 LRs x 2 WDs, the diverged ones included
        line = width["line"]  # finite points at the best trial's WD, by LR
        assert [p["lr"] for p in line] == [2**-8, 2**-6, 2**-4, 2**-2]
        assert len({p["wd"] for p in line}) == 1
        assert width["best"]["lr"] == 2**-4
        assert width["best"]["final_eval_loss"] == min(p["final_eval_loss"] for p in line)
        diverged = [p for p in width["points"] if p["status"] == "diverged"]
        assert len(diverged) == 2 and all(p["final_eval_loss"] is None for p in diverged)
    assert len(body["trials"]) == 20
    trial = body["trials"][0]
    assert trial["step"] == [10, 20] and trial["tokens"] == [1280, 2560]
    assert len(trial["eval_loss"]) == len(trial["train_loss"]) == 2
    diverged = next(t for t in body["trials"] if t["status"] == "diverged")
    assert diverged["eval_loss"] == [None, None]  # NaN is stored and sent as null
    assert body["transfer"] is None


def test_curves_carry_an_etag(client, make_spec, record):
    sweep_id = record(make_spec())
    first = client.get(f"/sweeps/{sweep_id}/curves")
    etag = first.headers["etag"]
    assert first.headers["cache-control"] == "no-cache"
    again = client.get(f"/sweeps/{sweep_id}/curves", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    other = client.get(f"/sweeps/{sweep_id}/curves", headers={"If-None-Match": '"x"'})
    assert other.status_code == 200 and other.json() == first.json()


def test_curves_of_a_running_sweep_follow_its_writes(make_client, make_spec, record, database):
    client = make_client(curves_ttl_s=0.0)  # no cache: every read sees the latest write
    sweep_id = record(make_spec(), status=db.JobStatus.RUNNING)
    trial_id = db.upsert_trial(
        database, sweep_id=sweep_id, key="extra", width=16, params={"lr": 0.1, "wd": 0.0}
    )
    before = client.get(f"/sweeps/{sweep_id}/curves").json()
    assert before["status"] == "running"
    point = db.MetricPoint(step=10, tokens=1280, train_loss=4.0, eval_loss=4.1, time_s=1.0)
    db.add_metric_points(database, trial_id=trial_id, points=[point])
    after = client.get(f"/sweeps/{sweep_id}/curves").json()
    extra = next(t for t in after["trials"] if t["key"] == "extra")
    assert extra["eval_loss"] == [4.1] and extra["status"] == "running"


def test_cancel_then_resume(client, auth, make_spec, record, launched):
    sweep_id = record(make_spec(), status=db.JobStatus.RUNNING)
    response = client.post(f"/sweeps/{sweep_id}/cancel", headers=auth)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    again = client.post(f"/sweeps/{sweep_id}/cancel", headers=auth)
    assert again.status_code == 409 and again.json()["error"] == "conflict"
    assert "nothing to cancel" in again.json()["reason"]
    resumed = client.post(f"/sweeps/{sweep_id}/resume", headers=auth)
    assert resumed.status_code == 202 and resumed.json()["id"] == sweep_id
    assert launched == [("sweep", sweep_id)]


def test_resume_of_a_completed_sweep_is_a_conflict(client, auth, make_spec, record, launched):
    sweep_id = record(make_spec())
    response = client.post(f"/sweeps/{sweep_id}/resume", headers=auth)
    assert response.status_code == 409 and "completed" in response.json()["reason"]
    assert launched == []


def test_transfer_gives_per_group_values_and_shows_on_the_curves(client, auth, make_spec, record):
    spec = make_spec(search={"lr": {"min": 2**-7, "max": 2**-1, "points": 7}, "wd": [0.0]})
    sweep_id = record(spec)
    response = client.post(f"/sweeps/{sweep_id}/transfer", json={"to_width": 256}, headers=auth)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["sweep_id"] == sweep_id and body["to_width"] == 256 and body["id"] >= 1
    result = body["result"]
    assert result["to_width"] == 256
    assert abs(result["drift"]["slope"]) < 0.05  # the made-up optimum is 2^-4 at every width
    assert result["base_lr"] == pytest.approx(2**-4, rel=0.05)
    assert [w["width"] for w in result["widths"]] == [16, 32]
    groups = {g["group"] for g in result["groups"]}
    assert {"hidden", "embedding", "readout", "norm"} <= groups
    assert isinstance(result["warnings"], list)
    assert client.get(f"/sweeps/{sweep_id}/curves").json()["transfer"]["to_width"] == 256
    # Computed after the curves were read (and cached): the next read has it all the same.
    client.post(f"/sweeps/{sweep_id}/transfer", json={"to_width": 512}, headers=auth)
    curves = client.get(f"/sweeps/{sweep_id}/curves").json()
    assert curves["transfer"]["to_width"] == 512
    assert curves["transfer"]["drift"] == pytest.approx(result["drift"])


def test_transfer_refuses_bad_widths_naming_the_field(client, auth, make_spec, record):
    sweep_id = record(make_spec())
    bad = client.post(f"/sweeps/{sweep_id}/transfer", json={"to_width": 100}, headers=auth)
    assert bad.status_code == 422 and bad.json()["field"] == "to_width"
    assert "head_dim" in bad.json()["reason"]
    for body in ({}, {"to_width": 0}, {"to_width": 256, "extra": 1}):
        response = client.post(f"/sweeps/{sweep_id}/transfer", json=body, headers=auth)
        assert response.status_code == 422
        assert response.json()["field"] in ("to_width", "extra")


def test_a_sweep_stays_readable_after_its_data_file_is_gone(
    make_client, make_spec, record, tmp_path
):
    data = tmp_path / "corpus.txt"
    data.write_text("to be or not to be " * 50)
    sweep_id = record(make_spec(data=str(data)))
    data.unlink()  # the spec names a file that is gone
    client = make_client()
    response = client.get(f"/sweeps/{sweep_id}")
    assert response.status_code == 200
    assert response.json()["id"] == sweep_id
    assert client.get("/sweeps").status_code == 200
