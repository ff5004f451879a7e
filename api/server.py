"""`sweeper serve`: the REST API and the dashboard under uvicorn.

Without ``SWEEPER_API_TOKEN`` it makes a token and prints it once, with the dashboard's
address carrying it in the URL fragment (which browsers never send to the server, so it
reaches no access log); the page keeps it in the browser's local storage.
"""

from __future__ import annotations

import secrets

import uvicorn
from pydantic import SecretStr

from api.main import create_app
from sweeper.service import Settings, is_loopback


def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the service on ``host:port`` until interrupted."""
    settings = Settings(api_host=host)
    made = settings.api_token is None
    if settings.api_token is None:
        settings = settings.model_copy(update={"api_token": SecretStr(secrets.token_urlsafe(32))})
    assert settings.api_token is not None
    token = settings.api_token.get_secret_value()
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"
    print(f"sweeper: dashboard at {url}/   API docs at {url}/docs", flush=True)
    if not is_loopback(host):
        print("sweeper: bound beyond loopback: reading routes need the token too", flush=True)
    if made:
        print(
            "sweeper: API token (shown once; set SWEEPER_API_TOKEN to choose it): "
            f"{token}\nsweeper: open {url}/#token={token} to give it to the dashboard",
            flush=True,
        )
    uvicorn.run(create_app(settings), host=host, port=port, server_header=False)
