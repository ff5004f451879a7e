"""GET /compare: sweeps side by side (recorded sweeps, no driver), and the transfer's refusal
of a sweep at one width (the check sweep at a target)."""

from __future__ import annotations

import math

import pytest

import db

LRS = {"lr": {"min": 2**-8, "max": 2**0, "points": 9}, "wd": [0.0, 0.1]}


def test_proxies_and_a_check_sweep_side_by_side(client, auth, make_spec, record, database):
    proxies = record(make_spec(name="proxies", search=LRS), diverge_above=0.5)
    transfer = client.post(f"/sweeps/{proxies}/transfer", json={"to_width": 256}, headers=auth)
    assert transfer.status_code == 201, transfer.text
    client.post(f"/sweeps/{proxies}/transfer", json={"to_width": 512}, headers=auth)
    latest_256 = client.post(f"/sweeps/{proxies}/transfer", json={"to_width": 256}, headers=auth)
    check = record(make_spec(name="check", widths=[256], search=LRS | {"wd": [0.0]}))
    queued = db.create_sweep(database, name="queued", spec=make_spec(name="queued"))

    response = client.get("/compare", params={"sweep_ids": f"{check},{proxies},{check},{queued}"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [s["sweep_id"] for s in body["sweeps"]] == [check, proxies, queued]  # each once
    by_id = {s["sweep_id"]: s for s in body["sweeps"]}

    p = by_id[proxies]
    assert (p["name"], p["status"], p["parametrization"], p["precision"]) == (
        "proxies",
        "completed",
        "mus",
        "fp32",
    )
    assert p["widths"] == [c["width"] for c in p["curves"]] == [16, 32]
    for curve in p["curves"]:
        # The diverged LRs are no points; the loss is the made-up parabola, lowest at 2^-4.
        assert curve["lr"] == [2.0**e for e in range(-8, 0)] and len(curve["loss"]) == 8
        assert curve["best_lr"] == 2**-4 and curve["best_loss"] == min(curve["loss"])
        assert curve["wd"] in (0.0, 0.1)
        assert curve["optimum"]["method"] == "parabola"
        assert math.log2(curve["optimum"]["value"]) == pytest.approx(-4, abs=0.05)
    stored = transfer.json()["result"]
    assert p["drift"] == pytest.approx(stored["drift"])
    # The drift line spans the proxies and reaches each target at the transfer's extrapolation.
    line = {point["width"]: point["lr"] for point in p["drift_line"]}
    assert sorted(line) == [16, 32, 256, 512]
    assert line[256] == pytest.approx(stored["extrapolated_lr"])
    marks = p["transfers"]
    assert [m["to_width"] for m in marks] == [256, 512]
    assert marks[0]["transfer_id"] == latest_256.json()["id"]  # the latest to each width
    assert marks[0]["base_lr"] == pytest.approx(stored["base_lr"])

    c = by_id[check]
    assert c["widths"] == [curve["width"] for curve in c["curves"]] == [256]
    assert c["drift"] is None and c["drift_line"] == [] and c["transfers"] == []
    assert c["curves"][0]["best_lr"] == 2**-4

    q = by_id[queued]
    assert q["status"] == "queued" and q["widths"] == [16, 32]
    assert q["curves"] == [] and q["drift"] is None


def test_the_transfer_of_a_one_width_sweep_is_refused(client, auth, make_spec, record):
    check = record(make_spec(widths=[256], search=LRS))
    response = client.post(f"/sweeps/{check}/transfer", json={"to_width": 512}, headers=auth)
    assert response.status_code == 422
    body = response.json()
    assert body["field"] == "sweep_id"
    assert f"sweep {check}: every finished trial is at width 256" in body["reason"]
    assert "two or more widths" in body["reason"]


@pytest.mark.parametrize(
    ("sweep_ids", "reason"),
    [
        ("", "item 1 (''): Input should be a valid integer"),
        ("1,x", "item 2 ('x'): Input should be a valid integer"),
        ("0", "item 1 ('0'): Input should be greater than or equal to 1"),
        ("1,-2", "item 2 ('-2'): Input should be greater than or equal to 1"),
        ("9" * 30, "less than or equal to 9223372036854775807"),
        (",".join(["1"] * 13), "at most 12 items"),
    ],
)
def test_bad_sweep_ids_answer_422_naming_the_field(client, sweep_ids, reason):
    response = client.get("/compare", params={"sweep_ids": sweep_ids})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid" and body["field"] == "sweep_ids", body
    assert reason in body["reason"], body


def test_missing_parameter_or_sweep(client, make_spec, record):
    missing = client.get("/compare")
    assert missing.status_code == 422 and missing.json()["field"] == "sweep_ids"
    sweep_id = record(make_spec())
    response = client.get("/compare", params={"sweep_ids": f"{sweep_id},999"})
    assert response.status_code == 404
    assert response.json()["reason"] == "sweep 999 not found"


def test_beyond_loopback_comparing_needs_the_token(make_client, auth, make_spec, record):
    client = make_client(api_host="0.0.0.0")
    sweep_id = record(make_spec())
    assert client.get("/compare", params={"sweep_ids": sweep_id}).status_code == 401
    response = client.get("/compare", params={"sweep_ids": sweep_id}, headers=auth)
    assert response.status_code == 200
