"""/health: whether the service and its database answer."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter

import db
from api.deps import DatabaseDep
from api.errors import responses
from api.schemas import Health

router = APIRouter(tags=["service"])


def package_version() -> str:
    try:
        return version("sweeper")
    except PackageNotFoundError:  # run from a checkout that was not installed
        return "unknown"


@router.get("/health", responses=responses(503))
def health(database: DatabaseDep) -> Health:
    """Open to all (no token): for load balancers and `docker compose` health checks."""
    db.list_sweeps(database, limit=1)  # a StorageError answers 503
    return Health(status="ok", database=database.backend, version=package_version())
