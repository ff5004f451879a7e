"""The FastAPI application: `create_app(settings)` wires settings, database, routers.

    uvicorn --factory api.main:create_app        # or: sweeper serve

At start the service opens (and migrates) the database and resumes every sweep and run
whose driver died while no service was watching; then its watchdog does so every
``SWEEPER_WATCHDOG_S`` (`service.recover_jobs`). The API process never trains: sweeps run in
driver processes that the service layer starts.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.staticfiles import StaticFiles

from api import errors
from api.cache import TTLCache
from api.curves import CurvesReader
from api.routers import compare, dashboard, runs, sweeps, system
from sweeper import service
from sweeper.service import Database, Periodic, Settings

log = logging.getLogger(__name__)

DESCRIPTION = """
Hyperparameter-transfer sweeps for FP8 LLM training with unit scaling (µS).

Mutating routes need `Authorization: Bearer <SWEEPER_API_TOKEN>` (401 without a token,
403 with a wrong one). Reading routes are open when the service is bound to loopback and
need the token otherwise. Errors are JSON: `{"error", "reason", "field", "errors"}`.
"""


def _open(settings: Settings) -> Database:
    database = service.open_database(settings)
    _watch(database, settings)
    return database


def _watch(database: Database, settings: Settings) -> None:
    """One watchdog pass over the jobs whose driver is gone."""
    done = service.recover_jobs(database, settings)
    if done:
        log.warning("jobs whose driver was gone: %s", ", ".join(done))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    if settings.api_token is None:
        log.warning("SWEEPER_API_TOKEN is not set: every mutating route answers 401/403")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.database = database = await run_in_threadpool(_open, settings)
        app.state.curves_reader = CurvesReader(database, worker=settings.curves_worker)
        watchdog: AbstractContextManager[object] = nullcontext()
        if settings.watchdog_s:
            watchdog = Periodic(lambda: _watch(database, settings), settings.watchdog_s, "watchdog")
        try:
            with watchdog:  # stopped first: it uses the database
                yield
        finally:
            app.state.curves_reader.close()
            database.dispose()

    app = FastAPI(
        title="sweeper",
        summary="µS hyperparameter-transfer sweeps: REST API and dashboard",
        description=DESCRIPTION,
        version=system.package_version(),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.curves_cache = TTLCache(settings.curves_ttl_s)
    errors.install(app)
    app.include_router(system.router)
    app.include_router(sweeps.router)
    app.include_router(runs.router)
    app.include_router(compare.router)
    app.include_router(dashboard.router)
    app.mount("/static", StaticFiles(directory=dashboard.STATIC), name="static")
    return app
