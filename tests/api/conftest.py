"""Fixtures of the API tests: a fresh SQLite file, an app over it, a token, recorded sweeps,
and Debian's chromium driven by Playwright (skipped, saying why, where either is missing).

Every test gets its own database file and state directories through the environment, as
the sweep drivers find them there. Route tests never start a driver (`no_driver`); the
end-to-end tests in test_api_dashboard.py do, on a real Ray local cluster.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import db
from api.main import create_app
from sweeper import service
from sweeper.settings import DB_URL_VAR, Settings
from sweeper.spec import SweepSpec
from tests.conftest import tiny_sweep

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def spec_dict(data: str = "stdlib", **overrides: Any) -> dict[str, Any]:
    """The tiny sweep of these tests (tests/conftest.py), named for the API tests."""
    return tiny_sweep(data, **({"name": "api-test"} | overrides))


@pytest.fixture
def env(tmp_path, monkeypatch) -> dict[str, str]:
    values = {
        DB_URL_VAR: f"sqlite:///{tmp_path / 'sweeper.db'}",
        "SWEEPER_DATA_DIR": str(tmp_path / "data"),
        "SWEEPER_API_TOKEN": TOKEN,
        "SWEEPER_API_HOST": "127.0.0.1",
        "SWEEPER_RAY_STORAGE": str(tmp_path / "ray_results"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("SWEEPER_RAY_ADDRESS", raising=False)
    return values


@pytest.fixture
def database(env) -> Iterator[db.Database]:
    database = db.connect(env[DB_URL_VAR])
    yield database
    database.dispose()


@pytest.fixture
def launched(monkeypatch) -> list[tuple[str, int]]:
    """Route tests start no driver: the (kind, id) it would have driven are recorded here."""
    calls: list[tuple[str, int]] = []

    def fake_launch(database: db.Database, kind: str, job_id: int, settings: Settings) -> None:
        calls.append((kind, job_id))

    monkeypatch.setattr(service, "launch_driver", fake_launch)
    return calls


@pytest.fixture
def make_client(env, database, launched) -> Iterator[Callable[..., TestClient]]:
    """TestClients over fresh apps; keyword arguments override the settings. Curves are read
    in-process unless a test asks for the worker (spawning one costs seconds), and the
    watchdog makes its pass at start only: these tests start no driver."""
    clients: list[TestClient] = []

    def make(**settings: Any) -> TestClient:
        settings.setdefault("curves_worker", False)
        settings.setdefault("watchdog_s", 0.0)
        client = TestClient(create_app(Settings(**settings)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


# A horizon sweep's made-up optimum falls by this much log2(LR) per doubling of steps,
# and a depth sweep's moves by DEPTH_SLOPE per doubling of depth.
HORIZON_SLOPE = -0.5
DEPTH_SLOPE = 0.5


def loss_at(width: int, lr: float, steps: int, depth: int) -> float:
    """A made-up LR curve: a parabola in log2(LR) with its minimum at 2^-4 at every width
    at 20 steps and 2 blocks (the tiny sweep's), moving by HORIZON_SLOPE per doubling of
    steps and DEPTH_SLOPE per doubling of depth."""
    optimum = -4.0 + HORIZON_SLOPE * math.log2(steps / 20) + DEPTH_SLOPE * math.log2(depth / 2)
    return 3.0 - 0.1 * math.log2(width) + 0.05 * (math.log2(lr) - optimum) ** 2


def record_sweep(
    database: db.Database,
    spec: dict[str, Any],
    *,
    status: db.JobStatus = db.JobStatus.COMPLETED,
    diverge_above: float = math.inf,
) -> int:
    """Store a sweep as `service.start_sweep` and its driver would have: its data identity,
    every planned trial with its curve."""
    every = spec["train"]["eval_interval"]
    validated = SweepSpec.model_validate(spec)
    data = service.identify_data(validated.train.data, "train.data")
    sweep_id = db.create_sweep(
        database, name=spec["name"], spec=validated.model_dump(mode="json"), data=data.model_dump()
    )
    db.set_sweep_status(database, sweep_id=sweep_id, status=db.JobStatus.RUNNING)
    for trial in validated.plan():
        trial_id = db.upsert_trial(
            database, sweep_id=sweep_id, key=trial.key, width=trial.width, params=trial.params
        )
        steps = int(trial.params.get("steps", validated.train.steps))
        depth = int(trial.params.get("depth", validated.train.model.depth))
        final = loss_at(trial.width, trial.params["lr"], steps, depth)
        diverged = trial.params["lr"] > diverge_above
        points = [
            db.MetricPoint(
                step=step,
                tokens=step * 128,
                train_loss=math.nan if diverged else final + 1.0 / step,
                eval_loss=math.nan if diverged else final + 0.5 / step,
                time_s=step / 10,
            )
            for step in range(every, steps + 1, every)
        ]
        db.add_metric_points(database, trial_id=trial_id, points=points)
        db.finish_trial(
            database,
            trial_id=trial_id,
            status=db.TrialStatus.DIVERGED if diverged else db.TrialStatus.COMPLETED,
            final_eval_loss=None if diverged else points[-1].eval_loss,
            steps=steps,
            tokens=steps * 128,
            tokens_per_s=1000.0,
            startup_s=1.5,
        )
    if status is not db.JobStatus.RUNNING:
        db.set_sweep_status(database, sweep_id=sweep_id, status=status)
    return sweep_id


# The helpers above, as fixtures: test modules do not import conftest.
@pytest.fixture
def auth() -> dict[str, str]:
    return dict(AUTH)


@pytest.fixture
def horizon_slope() -> float:
    return HORIZON_SLOPE


@pytest.fixture
def depth_slope() -> float:
    return DEPTH_SLOPE


@pytest.fixture
def make_spec() -> Callable[..., dict[str, Any]]:
    return spec_dict


@pytest.fixture
def record(database) -> Callable[..., int]:
    def record_in(spec: dict[str, Any], **kwargs: Any) -> int:
        return record_sweep(database, spec, **kwargs)

    return record_in


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
    if not CHROMIUM.is_file():
        pytest.skip(f"no system chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(30_000)
    yield page
    context.close()
    assert not errors, errors
