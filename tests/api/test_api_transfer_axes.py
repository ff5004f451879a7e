"""Transfer beyond width, over REST and in the dashboard (Debian's chromium): across token
horizons (a recorded sweep whose proxies ran at two horizons, its optimum falling by
``horizon_slope`` per doubling of steps, carried to the target's tokens) and to a deeper
target."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from benchmarks.proof_report import serve
from sweeper import service

TOKENS_PER_STEP = 4 * 32  # the tiny sweep's batch x sequence
HORIZONS = {"lr": {"min": 2**-8, "max": 2**0, "points": 9}, "wd": [0.0], "steps": [20, 80]}


def test_a_sweep_at_two_horizons_carries_the_optimum_to_the_target_s_tokens(
    client, auth, make_spec, record, horizon_slope
):
    sweep = record(make_spec(name="horizons", search=HORIZONS))
    to_tokens = 320 * TOKENS_PER_STEP  # 4x the longest horizon
    response = client.post(
        f"/sweeps/{sweep}/transfer", json={"to_width": 256, "to_tokens": to_tokens}, headers=auth
    )
    assert response.status_code == 201, response.text
    result = response.json()["result"]
    assert [h["tokens"] for h in result["horizons"]] == [20 * TOKENS_PER_STEP, 80 * TOKENS_PER_STEP]
    for h, log2_optimum in zip(result["horizons"], [-4.0, -5.0], strict=True):
        assert [math.log2(w["lr"]["value"]) for w in h["widths"]] == pytest.approx(
            [log2_optimum] * 2, abs=0.05
        )
        assert h["drift"]["slope"] == pytest.approx(0.0, abs=0.05)
    horizon = result["horizon"]
    assert horizon["slope"] == pytest.approx(horizon_slope, abs=0.05)
    assert (horizon["from_tokens"], horizon["to_tokens"]) == (80 * TOKENS_PER_STEP, to_tokens)
    assert horizon["log2_shift"] == pytest.approx(2 * horizon_slope, abs=0.1)
    assert horizon["log2_shift_uncertainty"] > 0
    assert math.log2(result["base_lr"]) == pytest.approx(-6.0, abs=0.15)
    assert not [w for w in result["warnings"] if "horizon" in w]

    # Without the target's tokens: the longest horizon's optimum, as it was measured.
    plain = client.post(f"/sweeps/{sweep}/transfer", json={"to_width": 256}, headers=auth)
    assert plain.json()["result"]["horizon"] is None
    assert math.log2(plain.json()["result"]["base_lr"]) == pytest.approx(-5.0, abs=0.1)

    # The dashboard's LR line at each width is one horizon's: the best trial's (the longest).
    curves = client.get(f"/sweeps/{sweep}/curves").json()
    for width in curves["widths"]:
        assert {p["steps"] for p in width["line"]} == {80} and len(width["line"]) == 9
        assert len(width["points"]) == 18


def test_a_one_horizon_sweep_warns_of_a_far_longer_target_and_bad_tokens_are_422(
    client, auth, make_spec, record
):
    sweep = record(make_spec(name="one-horizon", search={**HORIZONS, "steps": None}))
    far = client.post(
        f"/sweeps/{sweep}/transfer",
        json={"to_width": 256, "to_tokens": 1000 * 20 * TOKENS_PER_STEP},
        headers=auth,
    )
    assert far.status_code == 201, far.text
    result = far.json()["result"]
    assert result["horizon"] is None and result["horizons"] == []
    assert any("1e+03x the 2,560 of a proxy trial" in w for w in result["warnings"])
    for bad in (0, -5, 10**16, 1.5):
        response = client.post(
            f"/sweeps/{sweep}/transfer", json={"to_width": 256, "to_tokens": bad}, headers=auth
        )
        assert response.status_code == 422, (bad, response.text)
        assert "to_tokens" in response.text


def test_the_dashboard_shows_each_horizon_s_drift_and_the_move_to_the_target(
    env, database, make_spec, record, page
):
    sweep = record(make_spec(name="horizons", search=HORIZONS))
    service.transfer(database, sweep_id=sweep, to_width=256, to_tokens=320 * TOKENS_PER_STEP)
    with serve(env["SWEEPER_DB_URL"]) as url:
        page.goto(f"{url}/#/sweeps/{sweep}")  # the latest transfer is shown as it opens
        page.wait_for_selector("#transfer-horizon")
        assert page.locator("#transfer-tokens").inner_text() == "40,960"
        drifts = page.locator("#transfer-horizon-drifts").inner_text()
        assert drifts.startswith("2,560 tokens: drift 0.00") and "10,240 tokens: drift" in drifts
        horizon = page.locator("#transfer-horizon").inner_text()
        assert horizon.startswith("-0.50 ±") and "10,240 → 40,960 tokens" in horizon
        assert "2^(-1.00 ±" in horizon
        assert page.locator("#to-tokens").is_visible()


def test_a_deeper_target_gets_the_depth_rule_s_values_and_bad_depths_are_422(
    client, auth, make_spec, record
):
    base = make_spec(name="completep", search=HORIZONS | {"steps": None})
    model = base["train"]["model"] | {"depth_rule": "completep", "base_depth": 2}
    sweep = record(base | {"train": base["train"] | {"model": model}})
    flat = client.post(f"/sweeps/{sweep}/transfer", json={"to_width": 256}, headers=auth)
    deep = client.post(
        f"/sweeps/{sweep}/transfer", json={"to_width": 256, "to_depth": 16}, headers=auth
    )
    assert deep.status_code == 201, deep.text
    result = deep.json()["result"]
    assert result["to_depth"] == 16 and result["base_lr"] == flat.json()["result"]["base_lr"]
    # CompleteP keeps every group's LR and WD at any depth (tau is what moves)
    assert result["groups"] == flat.json()["result"]["groups"]
    for bad in (0, -1):
        response = client.post(
            f"/sweeps/{sweep}/transfer", json={"to_width": 256, "to_depth": bad}, headers=auth
        )
        assert response.status_code == 422 and "to_depth" in response.text, response.text
    # 1 block under CompleteP from 2: tau 0.4 x 4 is past 1, which the service names
    shallow = client.post(
        f"/sweeps/{sweep}/transfer", json={"to_width": 256, "to_depth": 1}, headers=auth
    )
    assert shallow.status_code == 422, shallow.text
    assert shallow.json()["field"] == "to_depth" and "not below 1" in shallow.json()["reason"]


def test_a_sweep_at_two_depths_reports_the_depth_drift_over_rest_and_in_the_dashboard(
    env, client, auth, database, make_spec, record, page, depth_slope
):
    base = make_spec(name="depths", search=HORIZONS | {"steps": None, "depth": [2, 4, 8]})
    model = base["train"]["model"] | {"depth_rule": "completep", "base_depth": 2, "tau": 0.2}
    sweep = record(base | {"train": base["train"] | {"model": model}})
    response = client.post(
        f"/sweeps/{sweep}/transfer", json={"to_width": 256, "to_depth": 16}, headers=auth
    )
    assert response.status_code == 201, response.text
    result = response.json()["result"]
    assert [d["depth"] for d in result["depths"]] == [2, 4, 8]
    for d, log2_optimum in zip(result["depths"], [-4.0, -3.5, -3.0], strict=True):
        assert [math.log2(w["lr"]["value"]) for w in d["widths"]] == pytest.approx(
            [log2_optimum] * 2, abs=0.05
        )
    assert result["depth_drift"]["slope"] == pytest.approx(depth_slope, abs=0.05)
    # the deepest proxies' optimum is transferred; the rule, not the fit, carries depth
    assert math.log2(result["base_lr"]) == pytest.approx(-3.0, abs=0.05)
    assert result["widths"] == result["depths"][-1]["widths"]
    assert any("per doubling of depth" in w for w in result["warnings"])

    # The CLI prints the same drift (env put the test's database in os.environ).
    cli = subprocess.run(
        [sys.executable, "-m", "sweeper", "transfer", "--sweep", str(sweep), "--to-width", "256"],
        capture_output=True, text=True, env=os.environ, check=True,
    )  # fmt: skip
    assert "depth drift: +0.500 ± " in cli.stdout and "over depths 2, 4, 8" in cli.stdout

    # The dashboard's LR line at each width is the deepest proxies'.
    curves = client.get(f"/sweeps/{sweep}/curves").json()
    for width in curves["widths"]:
        assert {p["depth"] for p in width["line"]} == {8} and len(width["points"]) == 27
    with serve(env["SWEEPER_DB_URL"]) as url:
        page.goto(f"{url}/#/sweeps/{sweep}")
        drift = page.locator("#transfer-depth-drift").inner_text()
        assert drift.startswith("drift +0.50 ±") and drift.endswith("(depths 2, 4, 8)")
        assert "per doubling of depth" in drift
