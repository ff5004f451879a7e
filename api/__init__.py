"""The sweeper service: REST API and live dashboard over `sweeper.service` (issue 7).

    from api import Settings, create_app, serve
    serve("127.0.0.1", 8000)            # what `sweeper serve` runs

Layout: `deps` (Annotated dependencies, auth),
`schemas` (request and response bodies), `errors` (JSON errors), `routers/` (one module per
resource), `curves` and `cache` (the curves read off the event loop and kept in memory),
`static/` (the dashboard page).
"""

from api.main import create_app
from api.server import serve
from sweeper.service import Settings

__all__ = ["Settings", "create_app", "serve"]
