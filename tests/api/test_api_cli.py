"""`sweeper serve [--host] [--port]`: the CLI hands its process to `python -m api`."""

from __future__ import annotations

import os
import sys

from typer.testing import CliRunner

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
