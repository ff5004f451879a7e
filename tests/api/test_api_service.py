"""The service itself: /health, OpenAPI, auth modes, settings, startup, dashboard files,
`serve`, and the curves cache."""

from __future__ import annotations

import gzip
import logging
import threading
import time

import pytest

import db
from api import server as serve_module
from api.cache import TTLCache
from api.routers import dashboard
from sweeper.settings import DB_URL_VAR, Settings, is_loopback


def test_health(client):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["database"] == "sqlite" and body["version"]


def test_openapi_lists_every_route_and_the_bearer_scheme(client):
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    routes = {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}
    assert routes == {
        ("GET", "/health"),
        ("GET", "/compare"),
        ("POST", "/sweeps"),
        ("GET", "/sweeps"),
        ("GET", "/sweeps/example"),
        ("GET", "/sweeps/{sweep_id}"),
        ("GET", "/sweeps/{sweep_id}/trials"),
        ("GET", "/sweeps/{sweep_id}/curves"),
        ("POST", "/sweeps/{sweep_id}/transfer"),
        ("POST", "/sweeps/{sweep_id}/cancel"),
        ("POST", "/sweeps/{sweep_id}/resume"),
        ("POST", "/runs"),
        ("GET", "/runs"),
        ("GET", "/runs/{run_id}"),
        ("GET", "/runs/{run_id}/metrics"),
        ("POST", "/runs/{run_id}/cancel"),
        ("POST", "/runs/{run_id}/resume"),
    }
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "SweepSpec" in schema["components"]["schemas"]


READS = ["/sweeps", "/sweeps/1", "/sweeps/1/trials", "/sweeps/1/curves", "/runs"]


def test_reads_are_open_on_loopback(client, make_spec, record):
    record(make_spec())
    for path in READS:
        assert client.get(path).status_code == 200, path


def test_reads_need_the_token_beyond_loopback(make_client, make_spec, record, auth):
    record(make_spec())
    client = make_client(api_host="0.0.0.0")
    for path in READS:
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"Authorization": "Bearer no"}).status_code == 403
        assert client.get(path, headers=auth).status_code == 200, path
    # Health and the dashboard's files hold no data: a probe and a browser need no token.
    for path in ["/health", "/", "/static/app.js", "/docs"]:
        assert client.get(path).status_code == 200, path


def test_without_a_configured_token_nothing_can_change(make_client, make_spec, launched):
    client = make_client(api_token=None)
    assert client.post("/sweeps", json=make_spec()).status_code == 401
    response = client.post("/sweeps", json=make_spec(), headers={"Authorization": "Bearer "})
    assert response.status_code == 401
    response = client.post("/sweeps", json=make_spec(), headers={"Authorization": "Bearer x"})
    assert response.status_code == 403
    assert launched == []


def test_the_token_is_never_logged(client, auth, make_spec, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    client.post("/sweeps", json=make_spec(), headers=auth)
    client.post("/sweeps/1/cancel", headers={"Authorization": "Bearer wrong-token-xyz"})
    client.get("/sweeps", headers=auth)
    captured = capsys.readouterr()
    for text in (caplog.text, captured.out, captured.err):
        assert auth["Authorization"].split()[1] not in text
        assert "wrong-token-xyz" not in text


def test_settings_come_from_the_environment(env, monkeypatch, tmp_path):
    settings = Settings()
    assert settings.database_url == env[DB_URL_VAR]
    assert settings.api_token is not None
    assert settings.api_token.get_secret_value() == env["SWEEPER_API_TOKEN"]
    assert env["SWEEPER_API_TOKEN"] not in repr(settings)
    assert not settings.reads_need_token
    assert settings.ray_address is None
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    monkeypatch.delenv(DB_URL_VAR)
    monkeypatch.setenv("SWEEPER_DATA_DIR", str(tmp_path / "elsewhere"))
    settings = Settings()
    assert settings.ray_address == "ray://head:10001"
    assert settings.database_url == f"sqlite:///{tmp_path / 'elsewhere' / 'sweeper.db'}"
    driver = settings.driver_environment("sqlite:///open.db")
    assert driver["SWEEPER_RAY_ADDRESS"] == "ray://head:10001"
    assert driver[DB_URL_VAR] == "sqlite:///open.db"
    assert Settings(api_host="10.1.2.3").reads_need_token


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.4", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_curves_read_in_the_worker_process_are_the_same(make_client, make_spec, record):
    sweep_id = record(make_spec(), diverge_above=0.1)
    in_process = make_client().get(f"/sweeps/{sweep_id}/curves")
    client = make_client(curves_worker=True)
    in_worker = client.get(f"/sweeps/{sweep_id}/curves")
    assert in_worker.status_code == 200 and in_worker.content == in_process.content
    missing = client.get("/sweeps/999/curves")  # the worker's NotFound crosses over
    assert missing.status_code == 404 and missing.json()["reason"] == "sweep 999 not found"


def test_dashboard_files(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/vendor/plotly.min.js"' in page.text
    assert '<script src="/static/app.js"' in page.text
    assert "https://" not in page.text  # nothing from a CDN: the page works offline
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "lr-curve" in script.text
    assert client.get("/static/style.css").status_code == 200


def test_plotly_comes_from_the_installed_package(client, monkeypatch):
    path = dashboard.plotly_js_path()
    if path is None:
        pytest.skip("plotly is not installed")
    raw = path.read_bytes()
    plain = client.get("/vendor/plotly.min.js", headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200 and plain.content == raw
    assert plain.headers["content-type"].startswith("text/javascript")
    zipped = client.get("/vendor/plotly.min.js", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.content == raw  # httpx decodes it
    assert len(gzip.compress(raw)) < len(raw) / 2
    monkeypatch.setattr(dashboard, "plotly_js_path", lambda: None)
    missing = client.get("/vendor/plotly.min.js")
    assert missing.status_code == 404 and "pip install plotly" in missing.json()["reason"]


def test_serve_makes_a_token_and_prints_it_once(monkeypatch, capsys, env):
    seen = {}

    def fake_run(app, **kwargs):
        seen["app"], seen["kwargs"] = app, kwargs

    monkeypatch.setattr(serve_module.uvicorn, "run", fake_run)
    monkeypatch.delenv("SWEEPER_API_TOKEN")
    serve_module.serve("127.0.0.1", 8123)
    out = capsys.readouterr().out
    token = seen["app"].state.settings.api_token.get_secret_value()
    assert len(token) >= 32 and out.count(token) == 2  # the token, and the dashboard link
    assert f"http://127.0.0.1:8123/#token={token}" in out
    assert seen["kwargs"]["host"] == "127.0.0.1" and seen["kwargs"]["port"] == 8123

    monkeypatch.setenv("SWEEPER_API_TOKEN", "chosen-token")
    serve_module.serve("0.0.0.0", 8124)
    out = capsys.readouterr().out
    assert "chosen-token" not in out and "reading routes need the token" in out
    settings = seen["app"].state.settings
    assert settings.api_token.get_secret_value() == "chosen-token"
    assert settings.reads_need_token


def test_cache_computes_once_for_concurrent_readers_and_expires():
    cache = TTLCache(ttl_s=0.2, stale_s=0.5)
    calls = []

    def compute() -> bytes:
        calls.append(1)
        time.sleep(0.05)
        return f"body{len(calls)}".encode()

    threads = [threading.Thread(target=cache.get, args=(1, compute)) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    entry = cache.get(1, compute)
    assert entry.body == b"body1" and entry.etag.startswith('"')
    assert cache.serve(1, compute) == entry

    time.sleep(0.25)  # stale: served at once while one refresh runs in the background
    assert cache.peek(1) is None
    assert [cache.serve(1, compute) for _ in range(5)] == [entry] * 5
    time.sleep(0.15)
    assert len(calls) == 2 and cache.peek(1).body == b"body2"

    time.sleep(0.8)  # too old even to serve stale
    assert cache.serve(1, compute) is None
    assert cache.get(1, compute).body == b"body3"
    cache.drop(1)
    assert cache.peek(1) is None and cache.serve(1, compute) is None

    off = TTLCache(ttl_s=0.0)
    off.get(1, compute)
    off.get(1, compute)
    assert len(calls) == 5 and off.serve(1, compute) is None


def test_a_failed_refresh_forgets_the_entry():
    cache = TTLCache(ttl_s=0.05)
    cache.get(1, lambda: b"x")
    time.sleep(0.1)

    def broken() -> bytes:
        raise db.NotFound("sweep 1 not found")

    assert cache.serve(1, broken).body == b"x"
    time.sleep(0.1)
    assert cache.serve(1, broken) is None


def test_a_read_that_began_before_a_drop_is_not_kept():
    cache = TTLCache(ttl_s=10.0)

    def compute() -> bytes:
        cache.drop(1)  # a transfer or a cancel lands while the read runs
        return b"old"

    assert cache.get(1, compute).body == b"old"
    assert cache.peek(1) is None
