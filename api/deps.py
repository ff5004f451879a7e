"""Dependencies of the routes, as `Annotated` aliases: the settings, the database, auth.

Auth is one bearer token (`Settings.api_token`). Mutating routes always need it: no
token 401, a wrong one 403. Reading routes need it only when the service is bound to an
interface other than loopback. Tokens are compared in constant time and never logged
(uvicorn's access log has no headers; the dashboard keeps its copy in the browser).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.cache import TTLCache
from api.curves import CurvesReader
from sweeper.service import MAX_ID, Database, Settings

_bearer = HTTPBearer(
    auto_error=False,
    description="SWEEPER_API_TOKEN (printed once by `sweeper serve` when it makes one)",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


async def get_curves_cache(request: Request) -> TTLCache:
    cache: TTLCache = request.app.state.curves_cache
    return cache


async def get_curves_reader(request: Request) -> CurvesReader:
    reader: CurvesReader = request.app.state.curves_reader
    return reader


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
CurvesCacheDep = Annotated[TTLCache, Depends(get_curves_cache)]
CurvesReaderDep = Annotated[CurvesReader, Depends(get_curves_reader)]


def _check(settings: Settings, credentials: HTTPAuthorizationCredentials | None) -> None:
    if credentials is None:
        raise HTTPException(
            401,
            "this route needs the API token: send 'Authorization: Bearer <SWEEPER_API_TOKEN>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    expected = settings.api_token.get_secret_value().encode() if settings.api_token else None
    if expected is None or not secrets.compare_digest(credentials.credentials.encode(), expected):
        raise HTTPException(403, "the API token is not the one this service was given")


async def require_token(settings: SettingsDep, credentials: Credentials) -> None:
    """For every mutating route."""
    _check(settings, credentials)


async def require_read_access(settings: SettingsDep, credentials: Credentials) -> None:
    """For every reading route: open on loopback, the token elsewhere."""
    if settings.reads_need_token:
        _check(settings, credentials)


Writer = Depends(require_token)
Reader = Depends(require_read_access)


@dataclass(frozen=True)
class Pagination:
    offset: int
    limit: int


async def pagination(
    offset: Annotated[int, Query(ge=0, le=MAX_ID, description="rows to skip")] = 0,
    limit: Annotated[int, Query(ge=1, le=500, description="rows at most")] = 50,
) -> Pagination:
    return Pagination(offset, limit)


# Dependencies that only read app state are `async def`: they run on the event loop, with
# no trip through the thread pool.
PageDep = Annotated[Pagination, Depends(pagination)]
# Ids in paths: bounded like the database's (64-bit), so any integer is a 404 or a 422.
SweepId = Annotated[int, Path(ge=1, le=MAX_ID, description="a sweep's id")]
RunId = Annotated[int, Path(ge=1, le=MAX_ID, description="a run's id")]
