"""A sweep or a run that could never run on the service's local cluster is refused with a
422 naming the field, before anything is queued (it would wait for ever)."""

from __future__ import annotations

import pytest

import db
from sweeper import cluster


def test_a_sweep_asking_for_more_than_the_machine_holds_is_a_422(
    client, auth, make_spec, database, launched
):
    local = cluster.local_node()
    if local.gpu >= 1:
        pytest.skip("this machine has a GPU")
    response = client.post("/sweeps", json=make_spec(resources={"cpu": 1, "gpu": 1}), headers=auth)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == "resources.gpu"
    assert body["reason"].startswith(
        "resources.gpu: a trial asks for 1 GPU; the largest node has 0"
    )
    cpus = client.post("/sweeps", json=make_spec(resources={"cpu": local.cpu + 1}), headers=auth)
    assert cpus.status_code == 422 and cpus.json()["field"] == "resources.cpu"
    assert db.list_sweeps(database).total == 0 and launched == []


def test_a_run_whose_workers_cannot_all_start_is_a_422(client, auth, record, make_spec, launched):
    record(make_spec())
    workers = int(cluster.local_node().cpu) + 1  # one CPU each
    response = client.post(
        "/runs", json={"to_width": 64, "steps": 10, "workers": workers}, headers=auth
    )
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "workers"
    assert f"{workers} workers need {workers} CPUs" in response.json()["reason"]
    fits = client.post("/runs", json={"to_width": 64, "steps": 10, "workers": 1}, headers=auth)
    assert fits.status_code == 202 and launched == [("run", fits.json()["id"])]
