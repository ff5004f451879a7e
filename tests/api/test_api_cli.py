"""`sweeper serve [--host] [--port]`: the CLI starts the service through `api.serve`."""

from __future__ import annotations

from typer.testing import CliRunner

import api
from sweeper.cli import app


def test_serve_passes_host_and_port(monkeypatch):
    calls = []
    monkeypatch.setattr(api, "serve", lambda host, port: calls.append((host, port)))
    runner = CliRunner()
    result = runner.invoke(app, ["serve", "--host", "0.0.0.0", "--port", "9001"])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["serve"]).exit_code == 0
    assert calls == [("0.0.0.0", 9001), ("127.0.0.1", 8000)]


def test_serve_help_names_its_options():
    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0, result.output
    assert "--host" in result.output and "--port" in result.output
