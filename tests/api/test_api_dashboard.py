"""End to end: the service under uvicorn on loopback, sweeps on a real Ray local cluster in
their driver processes, and the dashboard in Debian's chromium driven by Playwright.

The browser tests use the system chromium (never a downloaded one) and skip, saying why,
where it or Playwright is missing. `SWEEPER_UPDATE_SCREENSHOT=1` also writes the finished
sweep's page to docs/dashboard.png (the README's picture).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

import db
from api.main import create_app
from sweeper.settings import DB_URL_VAR, Settings
from tests.conftest import drivers_of, tiny_sweep

REPO = Path(__file__).resolve().parents[2]
TOKEN = "e2e-token-0123456789"
TIMEOUT_S = 240


@dataclass
class Live:
    url: str
    client: httpx.Client  # with the token
    database: db.Database


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Live]:
    """The service on a free loopback port, in a thread, over a fresh SQLite file."""
    tmp = tmp_path_factory.mktemp("live")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {
            DB_URL_VAR: f"sqlite:///{tmp / 'sweeper.db'}",
            "SWEEPER_DATA_DIR": str(tmp / "data"),
            "SWEEPER_API_TOKEN": TOKEN,
            "SWEEPER_RAY_STORAGE": str(tmp / "ray_results"),
            "XDG_STATE_HOME": str(tmp / "state"),
        }.items():
            mp.setenv(key, value)
        mp.delenv("RAY_ADDRESS", raising=False)
        app = create_app(Settings())
        port = _free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_for(lambda: server.started, "the server to start", timeout=30)
        url = f"http://127.0.0.1:{port}"
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"})
        try:
            yield Live(url, client, app.state.database)
        finally:
            client.close()
            for proc in drivers_of(app.state.database.url):  # none left behind a failure
                proc.kill()
            server.should_exit = True
            thread.join(30)


def tiny_spec(data: str, **overrides: Any) -> dict[str, Any]:
    return tiny_sweep(data, **({"name": "e2e"} | overrides))


def run_to_end(live: Live, sweep_id: int) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        body = live.client.get(f"/sweeps/{sweep_id}").json()
        return body if body["status"] in ("completed", "failed", "cancelled") else None

    return wait_for(finished, f"sweep {sweep_id} to end")


@pytest.fixture(scope="module")
def finished_sweep(live, shakespeare) -> int:
    """A tiny sweep started over REST and run to its end by its driver on Ray."""
    response = live.client.post("/sweeps", json=tiny_spec(shakespeare))
    assert response.status_code == 202, response.text
    sweep_id: int = response.json()["id"]
    body = run_to_end(live, sweep_id)
    assert body["status"] == "completed", body["error"]
    return sweep_id


def test_a_sweep_started_over_rest_completes_and_its_curves_come_back(live, finished_sweep):
    detail = live.client.get(f"/sweeps/{finished_sweep}").json()
    assert detail["planned"] == detail["finished"] == 4
    assert set(detail["best"]) == {"16", "32"}
    trials = live.client.get(f"/sweeps/{finished_sweep}/trials").json()["items"]
    assert len(trials) == 4 and all(t["status"] == "completed" and t["node_id"] for t in trials)
    curves = live.client.get(f"/sweeps/{finished_sweep}/curves").json()
    assert curves["status"] == "completed"
    for width in curves["widths"]:
        assert [p["lr"] for p in width["line"]] == [2**-6, 2**-2]
        assert all(p["final_eval_loss"] > 0 for p in width["line"])
        assert width["best"] is not None
    assert len(curves["trials"]) == 4
    for trial in curves["trials"]:
        assert trial["step"] == [10, 20] and None not in trial["eval_loss"]
    wait_for(
        lambda: not drivers_of(live.database.url), "the driver to end with its sweep", timeout=60
    )


# --- the browser (the `browser` and `page` fixtures of conftest.py) ------------------------


def lr_traces(page: Any) -> list[list[Any]]:
    return page.evaluate(
        """() => document.getElementById('lr-plot').data
            .filter((t) => t.meta && t.meta.kind === 'lr-curve')
            .map((t) => [t.meta.width, t.x.length, t.y.filter((y) => y !== null).length])"""
    )


def test_dashboard_shows_the_lr_curves_of_a_finished_sweep(live, finished_sweep, page, tmp_path):
    page.goto(f"{live.url}/#token={TOKEN}")  # as `sweeper serve` prints it
    page.wait_for_selector(f"#sweeps-body tr[data-sweep-id='{finished_sweep}']")
    row = page.locator(f"#sweeps-body tr[data-sweep-id='{finished_sweep}']")
    assert "completed" in row.inner_text() and "4/4" in row.inner_text()
    row.click()
    page.wait_for_function("() => document.getElementById('lr-plot')?.data?.length > 0")
    assert lr_traces(page) == [[16, 2, 2], [32, 2, 2]]  # one trace per width, one point per LR
    best = page.evaluate(
        "() => document.getElementById('lr-plot').data.find((t) => t.meta.kind === 'best').x"
    )
    assert len(best) == 2
    trials = page.evaluate("() => document.getElementById('train-plot').data.length")
    assert trials == 4
    assert page.locator("#trials-table tbody tr").count() == 4
    # each trial's steady-state speed and its startup, side by side (a real sweep's values)
    headers = page.locator("#trials-table thead th").all_inner_texts()
    row = page.locator("#trials-table tbody tr").first.locator("td").all_inner_texts()
    startup = row[headers.index("startup s")]
    assert float(startup) > 0 and row[headers.index("tokens/s")] != "–"

    # The transfer panel: a target width gives each group's LR/WD, and the fit is drawn.
    page.fill("#to-width", "128")
    page.click("#compute-transfer")
    page.wait_for_selector("#transfer-groups tbody tr")
    groups = page.locator("#transfer-groups tbody tr").all_inner_texts()
    assert {g.split()[0] for g in groups} == {"hidden", "embedding", "readout", "norm"}
    assert page.locator("#transfer-width").inner_text() == "128"
    assert "only 2 finite points" in page.locator("#transfer-warnings").inner_text()
    page.wait_for_function(
        "() => document.getElementById('lr-plot').data.some((t) => t.meta.kind === 'fit')"
    )
    title = page.evaluate("() => document.getElementById('lr-plot').layout.title.text")
    assert "drift" in title
    assert page.locator("#launch-run").is_visible()
    # The target's tokens, far beyond the one horizon swept: the transfer says so.
    page.fill("#to-tokens", "2e9")
    page.click("#compute-transfer")
    page.wait_for_selector("#transfer-tokens")
    assert page.locator("#transfer-tokens").inner_text() == "2,000,000,000"
    assert "token horizon" in page.locator("#transfer-warnings").inner_text()
    page.fill("#to-tokens", "")
    page.click("#compute-transfer")
    page.wait_for_selector("#transfer-tokens", state="detached")

    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("SWEEPER_UPDATE_SCREENSHOT"):
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, REPO / "docs" / "dashboard.png")


def test_start_a_sweep_from_the_form_and_see_it_progress(live, page, shakespeare):
    page.goto(f"{live.url}/#/new")  # a fresh browser: no token yet
    page.wait_for_selector("#spec-form")
    assert page.input_value("input[name='train.data']") == "stdlib"  # defaults are ready
    for name, value in {
        "name": "from-the-form",
        "widths": "16, 20",  # wrong: not a multiple of head_dim
        "train.data": shakespeare,
        "train.model.seq_len": "32",
        "train.steps": "400",
        "train.batch_size": "4",
        "train.eval_interval": "10",
        "train.eval_batches": "2",
        # 8 trials: when the first has finished, others still wait for a CPU (trials that
        # ran side by side would finish together, before the cancel)
        "search.lr.points": "4",
    }.items():
        page.fill(f"input[name='{name}']", value)
    page.select_option("select[name='train.precision']", "fp32")

    page.click("#start-sweep")
    page.wait_for_function("() => document.getElementById('spec-error').textContent !== ''")
    assert "API token" in page.inner_text("#spec-error")  # 401: the page says what to do
    page.fill("#token-input", TOKEN)
    page.click("#token-form button")
    assert page.inner_text("#token-state") == "set"

    page.click("#start-sweep")
    page.wait_for_function("() => document.getElementById('spec-error').textContent !== ''")
    assert "widths" in page.inner_text("#spec-error")  # 422 names the field
    assert "invalid" in (page.get_attribute("input[name='widths']", "class") or "")

    page.fill("input[name='widths']", "16, 32")
    page.click("#start-sweep")
    page.wait_for_url("**/#/sweeps/*")
    sweep_id = int(page.url.rsplit("/", 1)[1])
    assert live.client.get(f"/sweeps/{sweep_id}").json()["name"] == "from-the-form"

    progress = "() => document.querySelector('#sweep-progress progress')"
    page.wait_for_function(f"() => ({progress})()?.value >= 1", timeout=TIMEOUT_S * 1000)
    assert page.evaluate(f"() => ({progress})().max") == 8
    page.wait_for_function(
        "() => document.getElementById('lr-plot').data.some((t) => t.x.length > 0)"
    )
    page.click("#cancel-sweep")
    page.wait_for_selector("#sweep-meta .status.cancelled")
    wait_for(
        lambda: not drivers_of(live.database.url),
        "the cancelled sweep's driver to stop",
        timeout=60,
    )


def test_runs_show_their_loss_curve(live, finished_sweep, page):
    # A run as its driver records it (no driver here: a full-size run is not what is tested).
    run_id = db.create_run(
        live.database,
        name="recorded run",
        config={"launch": {"to_width": 128, "steps": 30}, "train": {"steps": 30}},
        sweep_id=finished_sweep,
    )
    db.set_run_status(live.database, run_id=run_id, status=db.JobStatus.RUNNING)
    points = [
        db.MetricPoint(step=s, tokens=s * 128, train_loss=5 - s / 10, eval_loss=None, time_s=s / 10)
        for s in range(1, 11)
    ]
    db.add_metric_points(live.database, run_id=run_id, points=points)
    page.goto(f"{live.url}/#/runs")
    page.wait_for_selector(f"#runs-table a[href='#/runs/{run_id}']")
    assert "running" in page.locator("#runs-table tbody tr").first.inner_text()
    page.click(f"#runs-table a[href='#/runs/{run_id}']")
    curve = "() => document.getElementById('run-plot')?.data?.[0]?.x.length"
    page.wait_for_function(f"() => ({curve})() === 10")
    more = [
        db.MetricPoint(
            step=s,
            tokens=s * 128,
            train_loss=4.0,
            eval_loss=4.1,
            tokens_per_s=1234.0,
            startup_s=2.5,
            time_s=s / 10,
        )
        for s in range(11, 16)
    ]
    db.add_metric_points(live.database, run_id=run_id, points=more)
    page.wait_for_function(f"() => ({curve})() === 15")  # live: the page polls
    assert "step 15 of 30" in page.inner_text("#run-meta")
    assert "1,234 tok/s, startup 2.5 s" in page.inner_text("#run-speed")
    assert page.is_disabled("#resume-run") and page.is_enabled("#cancel-run")
    db.note_run_resumed(live.database, run_id=run_id, step=10)
    page.wait_for_selector("#run-restarts")
    assert "resumed 1× (last from the checkpoint of step 10)" in page.inner_text("#run-restarts")
    db.set_run_status(live.database, run_id=run_id, status=db.JobStatus.COMPLETED)
    page.wait_for_selector("#run-meta .status.completed")
    assert page.is_disabled("#cancel-run") and page.is_disabled("#resume-run")
