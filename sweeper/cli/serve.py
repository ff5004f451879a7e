"""`sweeper serve`: the REST API and the dashboard. The API sits beside the CLI, not below
it (the import contract), so the command hands this process over to the API's own entry
point, `python -m api`, which makes and prints the token when none is set."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from sweeper.cli._app import app


@app.command("serve")
def serve_command(
    host: Annotated[
        str, typer.Option(help="interface to bind; beyond loopback, reads need the token too")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 8000,
) -> None:
    """Run the REST API and the live dashboard (prints a token once if none is set)."""
    argv = [sys.executable, "-m", "api", "--host", host, "--port", str(port)]
    os.execv(sys.executable, argv)
