"""The data identity through the API and the dashboard: a sweep on a prepared dataset, a
launch on another tokenizer's, the transfer's warnings, and both pages in Debian's chromium."""

from __future__ import annotations

from typing import Any

import pytest

import db
from benchmarks.proof_report import CHROMIUM, chromium, serve
from models.prepare import prepare
from sweeper import service
from tests.conftest import SHAKESPEARE


@pytest.fixture
def page() -> Any:
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
    if not CHROMIUM.is_file():
        pytest.skip(f"no system chromium at {CHROMIUM} (apt-get install chromium)")
    with chromium() as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        yield page
        assert not errors, errors


def sweep_and_run(client, auth, record, make_spec, tmp_path) -> tuple[int, dict[str, Any]]:
    """A sweep recorded on shakespeare prepared as bytes, and a run launched from it on the
    same text as a BPE, with 1000x the tokens of a proxy trial (20 steps of 4 x 32)."""
    byte_data = prepare([SHAKESPEARE], tokenizer="bytes", out=tmp_path / "bytes")
    bpe_data = prepare([SHAKESPEARE], tokenizer="bpe", vocab_size=300, out=tmp_path / "bpe")
    lrs = {"lr": {"min": 2**-7, "max": 2**-1, "points": 7}, "wd": [0.0]}
    sweep_id = record(make_spec(byte_data.source, search=lrs))
    body = {"sweep_id": sweep_id, "to_width": 64, "steps": 20_000, "data": bpe_data.source}
    response = client.post("/runs", json=body, headers=auth)
    assert response.status_code == 202, response.text
    return sweep_id, response.json()


def test_sweeps_and_runs_carry_their_data_and_the_transfer_warns(
    database, client, auth, make_spec, record, launched, tmp_path
):
    sweep_id, run = sweep_and_run(client, auth, record, make_spec, tmp_path)
    sweep = client.get(f"/sweeps/{sweep_id}").json()
    assert (sweep["data"]["tokenizer"], sweep["data"]["vocab_size"]) == ("bytes", 257)
    assert sweep["spec"]["train"]["model"]["vocab_size"] == 257  # from meta.json
    assert sweep["data"]["train_tokens"] > 250_000
    assert client.get(f"/runs/{run['id']}").json()["data"] == run["data"]
    assert run["data"]["tokenizer"] == "bpe" and run["data"]["tokenizer_sha256"]
    assert run["config"]["train"]["model"]["vocab_size"] == run["data"]["vocab_size"]
    warnings = db.get_transfer(database, transfer_id=run["transfer_id"]).result["warnings"]
    assert any("tokenizer bytes" in w and "bpe" in w for w in warnings), warnings
    assert any("1e+03x" in w and "token horizon" in w for w in warnings), warnings

    body = {"sweep_id": sweep_id, "to_width": 64, "steps": 20, "data": str(tmp_path / "gone")}
    missing = client.post("/runs", json=body, headers=auth)
    assert missing.status_code == 422 and missing.json()["field"] == "data", missing.text
    assert "gone" in missing.json()["reason"] and "\n" not in missing.json()["reason"]


def test_the_dashboard_shows_dataset_tokenizer_and_token_counts(
    env, database, client, auth, make_spec, record, launched, tmp_path, page
):
    sweep_id, run = sweep_and_run(client, auth, record, make_spec, tmp_path)
    service.cancel_run(database, run["id"])  # the report server serves no job in flight
    sweep_data = client.get(f"/sweeps/{sweep_id}").json()["data"]
    with serve(env["SWEEPER_DB_URL"]) as url:
        page.goto(f"{url}/#/sweeps/{sweep_id}")
        text = page.wait_for_selector("#sweep-data").inner_text()
        assert "data bytes · bytes tokenizer · vocab 257" in text
        counts = f"{sweep_data['train_tokens']:,} train + {sweep_data['val_tokens']:,} val"
        assert counts in text
        page.goto(f"{url}/#/runs/{run['id']}")
        text = page.wait_for_selector("#run-data").inner_text()
        assert f"data bpe · bpe tokenizer · vocab {run['data']['vocab_size']}" in text
