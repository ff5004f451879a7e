"""The dashboard: one static page and its script, and Plotly.js from the installed `plotly`
package (no CDN: the page works offline). The page holds no data; it reads the REST API."""

from __future__ import annotations

import gzip
import importlib.util
import threading
from functools import cache
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(include_in_schema=False)
_gzip_lock = threading.Lock()


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def plotly_js_path() -> Path | None:
    """`plotly/package_data/plotly.min.js` of the installed plotly package, if any."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    return path if path.is_file() else None


@cache
def _gzipped(path: Path) -> bytes:
    return gzip.compress(path.read_bytes(), compresslevel=6)


def _gzipped_once(path: Path) -> bytes:
    with _gzip_lock:  # the first page loads compress it once (about 0.3 s), not each
        return _gzipped(path)


@router.get("/vendor/plotly.min.js")
async def plotly_js(request: Request) -> Response:
    path = plotly_js_path()
    if path is None:
        raise HTTPException(404, "plotly is not installed: pip install plotly")
    headers = {"Cache-Control": "public, max-age=86400", "Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", ""):
        body = await run_in_threadpool(_gzipped_once, path)
        headers["Content-Encoding"] = "gzip"
        return Response(body, media_type="text/javascript", headers=headers)
    return FileResponse(path, media_type="text/javascript", headers=headers)
