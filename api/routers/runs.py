"""/runs: full-size runs launched with a sweep's transferred values, and their curves."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from api.deps import DatabaseDep, PageDep, Reader, RunId, Writer
from api.errors import responses
from api.schemas import ErrorBody, Page, RunMetrics, RunOut
from sweeper import service
from sweeper.launch import LaunchRequest

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
def launch_run(request: LaunchRequest, database: DatabaseDep, response: Response) -> RunOut:
    """Transfer the sweep's optimum to `to_width` and start the run in the background."""
    run = service.launch_run(database, request)
    response.headers["Location"] = f"/runs/{run.id}"
    return RunOut.of(run)


@router.get("")
def list_runs(database: DatabaseDep, page: PageDep) -> Page[RunOut]:
    """Runs newest first."""
    runs = service.list_runs(database, offset=page.offset, limit=page.limit)
    return Page(
        items=[RunOut.of(r) for r in runs.items],
        total=runs.total,
        offset=page.offset,
        limit=page.limit,
    )


@router.get("/{run_id}", responses=ONE)
def get_run(run_id: RunId, database: DatabaseDep) -> RunOut:
    return RunOut.of(service.run_progress(database, run_id).run)


@router.get("/{run_id}/metrics", responses=ONE)
def get_run_metrics(run_id: RunId, database: DatabaseDep) -> RunMetrics:
    """The run's loss curve so far, as columns (null: not measured, or not finite)."""
    return RunMetrics.of(service.run_progress(database, run_id))


@router.post("/{run_id}/cancel", dependencies=[Writer], responses=CHANGE)
def cancel_run(run_id: RunId, database: DatabaseDep) -> RunOut:
    """Stop the run at its next report; its checkpoints stay."""
    return RunOut.of(service.cancel_run(database, run_id))


@router.post(
    "/{run_id}/resume",
    status_code=202,
    dependencies=[Writer],
    responses=CHANGE,
)
def resume_run(run_id: RunId, database: DatabaseDep) -> RunOut:
    """Continue a run whose driver died, or that failed or was cancelled, from its latest
    checkpoint."""
    return RunOut.of(service.resume_run(database, run_id))
