"""/health: whether the service and its database answer."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter

from api.deps import DatabaseDep
from api.errors import responses
from api.schemas import Health
from sweeper import service

router = APIRouter(tags=["service"])


def package_version() -> str:
    try:
        return version("sweeper")
    except PackageNotFoundError:  # run from a checkout that was not installed
        return "unknown"


@router.get("/health", responses=responses(503))
def health(database: DatabaseDep) -> Health:
    """Open to all (no token): for load balancers and `docker compose` health checks."""
    backend = service.health(database)  # a StorageError answers 503
    return Health(status="ok", database=backend, version=package_version())
