"""`sweeper serve [--host] [--port]`: the CLI hands its process to `python -m api`."""

from __future__ import annotations

import json
import os
import sys

from typer.testing import CliRunner

import db
from sweeper import service
from sweeper.cli import app


def test_serve_passes_host_and_port(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "execv", lambda path, argv: calls.append(argv))
    runner = CliRunner()
    result = runner.invoke(app, ["serve", "--host", "0.0.0.0", "--port", "9001"])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["serve"]).exit_code == 0
    api = [sys.executable, "-m", "api"]
    assert calls == [
        [*api, "--host", "0.0.0.0", "--port", "9001"],
        [*api, "--host", "127.0.0.1", "--port", "8000"],
    ]


def test_serve_help_names_its_options():
    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0, result.output
    assert "--host" in result.output and "--port" in result.output


def _cli_json(*args: str) -> object:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_cli_json_is_the_api_json(client, database, record, make_spec, launched):
    """`--json` prints the service's read models exactly as the REST API serves them."""
    first = record(make_spec(name="first"))
    second = record(make_spec(name="second"), status=service.JobStatus.RUNNING)
    run_id = db.create_run(database, name="r", config={"train": {"steps": 1}}, sweep_id=first)
    db.add_metric_points(
        database,
        run_id=run_id,
        points=[db.MetricPoint(step=5, tokens=640, train_loss=3.0, eval_loss=None, time_s=1.0)],
    )
    for args, path in [
        (["sweep", "list", "--limit", "1", "--offset", "1"], "/sweeps?limit=1&offset=1"),
        (["sweep", "status", str(second)], f"/sweeps/{second}"),
        (["sweep", "trials", str(first), "--limit", "3"], f"/sweeps/{first}/trials?limit=3"),
        (["run", "list"], "/runs"),
        (["run", "status", str(run_id)], f"/runs/{run_id}"),
        (["run", "metrics", str(run_id)], f"/runs/{run_id}/metrics"),
    ]:
        assert _cli_json(*args) == client.get(path).json(), path
    listed = _cli_json("sweep", "list")
    assert set(listed) == {"items", "total", "offset", "limit"} and listed["total"] == 2
    # One grouped query counts what each sweep's own progress counts.
    progress = [service.sweep_progress(database, i) for i in (second, first)]
    assert [s["finished"] for s in listed["items"]] == [p.finished for p in progress]
    assert [s["planned"] for s in listed["items"]] == [p.planned for p in progress]
