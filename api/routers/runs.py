"""/runs: full-size runs launched with a sweep's transferred values, and their curves."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from api.deps import DatabaseDep, PageDep, Reader, RunId, SettingsDep, Writer
from api.errors import responses
from api.schemas import ErrorBody
from sweeper import service
from sweeper.service import LaunchRequest, Page, RunMetrics, RunView

router = APIRouter(
    prefix="/runs", tags=["runs"], dependencies=[Reader], responses=responses(401, 403, 422, 503)
)
ONE: dict[int | str, dict[str, Any]] = responses(404)  # a route about one run
CHANGE: dict[int | str, dict[str, Any]] = responses(404, 409)


@router.post(
    "",
    status_code=202,
    dependencies=[Writer],
    responses={
        404: {"model": ErrorBody, "description": "no such sweep, or no completed sweep"},
        422: {
            "model": ErrorBody,
            "description": "the request is invalid, or its workers do not fit the cluster"
            " (the field is named)",
        },
    },
)
def launch_run(
    request: LaunchRequest, database: DatabaseDep, settings: SettingsDep, response: Response
) -> RunView:
    """Transfer the sweep's optimum to `to_width` and start the run in the background."""
    run = service.launch_run(database, request, settings)
    response.headers["Location"] = f"/runs/{run.id}"
    return run


@router.get("")
def list_runs(database: DatabaseDep, settings: SettingsDep, page: PageDep) -> Page[RunView]:
    """Runs newest first."""
    return service.list_runs(database, offset=page.offset, limit=page.limit, settings=settings)


@router.get("/{run_id}", responses=ONE)
def get_run(run_id: RunId, database: DatabaseDep, settings: SettingsDep) -> RunView:
    return service.get_run(database, run_id, settings)


@router.get("/{run_id}/metrics", responses=ONE)
def get_run_metrics(run_id: RunId, database: DatabaseDep) -> RunMetrics:
    """The run's loss curve so far, as columns (null: not measured, or not finite)."""
    return service.run_metrics(database, run_id)


@router.post("/{run_id}/cancel", dependencies=[Writer], responses=CHANGE)
def cancel_run(run_id: RunId, database: DatabaseDep, settings: SettingsDep) -> RunView:
    """Stop the run at its next report; its checkpoints stay."""
    return service.cancel_run(database, run_id, settings)


@router.post(
    "/{run_id}/resume",
    status_code=202,
    dependencies=[Writer],
    responses=CHANGE,
)
def resume_run(run_id: RunId, database: DatabaseDep, settings: SettingsDep) -> RunView:
    """Continue a run whose driver died, or that failed or was cancelled, from its latest
    checkpoint."""
    return service.resume_run(database, run_id, settings)
