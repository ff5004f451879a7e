"""A job that should have a driver and has none shows as stale: in the API (`stale`) and on
the dashboard (Debian's chromium), where it can be resumed.

`sweeper serve` runs as a process of its own with its watchdog's periodic pass off (it would
resume the job at once); the jobs are recorded after it started, with drivers that have
exited.
"""

from __future__ import annotations

import db
from sweeper.jobs import Job, this_host
from sweeper.settings import Settings
from tests.conftest import exited_pid, sweeper_serve


def test_a_job_whose_driver_is_gone_shows_as_stale(
    env, database, record, make_spec, page, tmp_path, monkeypatch
):
    monkeypatch.setenv("SWEEPER_WATCHDOG_S", "0")
    token = env["SWEEPER_API_TOKEN"]
    with sweeper_serve(tmp_path / "serve.log", token) as client:
        sweep_id = record(make_spec(), status=db.JobStatus.RUNNING)
        run_id = db.create_run(database, name="r", config={"launch": {}, "train": {}})
        db.set_run_status(database, run_id=run_id, status=db.JobStatus.RUNNING)
        for kind, job_id in (("sweep", sweep_id), ("run", run_id)):
            Job(database, kind, job_id, Settings()).set_driver(this_host(), exited_pid())
        fresh = record(make_spec(name="alive"), status=db.JobStatus.RUNNING)  # not stale yet

        sweep = client.get(f"/sweeps/{sweep_id}").json()
        assert sweep["status"] == "running" and sweep["stale"] is True
        assert client.get(f"/sweeps/{fresh}").json()["stale"] is False
        assert client.get(f"/runs/{run_id}").json()["stale"] is True
        assert client.get("/sweeps").json()["items"][1]["stale"] is True

        page.goto(f"{client.base_url}/#token={token}")
        row = page.locator(f"#sweeps-body tr[data-sweep-id='{sweep_id}'] .status")
        row.wait_for()
        assert row.inner_text() == "running · stale"
        assert "its driver is gone" in (row.get_attribute("title") or "")
        alive = page.locator(f"#sweeps-body tr[data-sweep-id='{fresh}'] .status")
        assert alive.inner_text() == "running"

        page.goto(f"{client.base_url}/#/sweeps/{sweep_id}")
        page.wait_for_selector("#sweep-meta .status.stale")
        assert page.is_enabled("#resume-sweep") and page.is_enabled("#cancel-sweep")

        page.goto(f"{client.base_url}/#/runs/{run_id}")
        page.wait_for_selector("#run-meta .status.stale")
        assert page.is_enabled("#resume-run")
