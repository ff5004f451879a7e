"""/sweeps: start, list, inspect, cancel and resume proxy sweeps; their curves."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from api.deps import (
    CurvesCacheDep,
    CurvesReaderDep,
    DatabaseDep,
    PageDep,
    Reader,
    SettingsDep,
    SweepId,
    Writer,
)
from api.errors import responses
from api.schemas import ErrorBody, SweepExample, TransferRequest
from sweeper import service
from sweeper.service import (
    Page,
    SweepCreated,
    SweepCurves,
    SweepDetail,
    SweepSpec,
    SweepSummary,
    TransferView,
    TrialView,
)

router = APIRouter(
    prefix="/sweeps",
    tags=["sweeps"],
    dependencies=[Reader],
    responses=responses(401, 403, 422, 503),
)
ONE: dict[int | str, dict[str, Any]] = responses(404)  # a route about one sweep
CHANGE: dict[int | str, dict[str, Any]] = responses(404, 409)


@router.post(
    "",
    status_code=202,
    dependencies=[Writer],
    responses={
        422: {
            "model": ErrorBody,
            "description": "the spec is invalid, or asks for more than the cluster holds"
            " (the field is named)",
        }
    },
)
def start_sweep(
    spec: SweepSpec, database: DatabaseDep, settings: SettingsDep, response: Response
) -> SweepCreated:
    """Store the sweep and start its driver; the sweep runs in the background."""
    sweep = service.start_sweep(database, spec, settings)
    response.headers["Location"] = f"/sweeps/{sweep.id}"
    return sweep


@router.get("/example")
def example() -> SweepExample:
    """The defaults of the dashboard's new-sweep form: a tiny CPU sweep, every field set."""
    return SweepExample.of(service.example_spec())


@router.get("")
def list_sweeps(database: DatabaseDep, settings: SettingsDep, page: PageDep) -> Page[SweepSummary]:
    """Sweeps newest first, each with its progress."""
    return service.list_sweeps(database, offset=page.offset, limit=page.limit, settings=settings)


@router.get("/{sweep_id}", responses=ONE)
def get_sweep(sweep_id: SweepId, database: DatabaseDep, settings: SettingsDep) -> SweepDetail:
    """A sweep's state, its spec and the best trial at each width."""
    return service.get_sweep(database, sweep_id, settings)


@router.get("/{sweep_id}/trials", responses=ONE)
def list_trials(sweep_id: SweepId, database: DatabaseDep, page: PageDep) -> Page[TrialView]:
    """A sweep's trials in the order they started."""
    return service.list_trials(database, sweep_id, offset=page.offset, limit=page.limit)


@router.get(
    "/{sweep_id}/curves",
    response_model=SweepCurves,
    responses=ONE | {304: {"description": "unchanged since the ETag sent in If-None-Match"}},
)
async def get_curves(
    sweep_id: SweepId, request: Request, reader: CurvesReaderDep, cache: CurvesCacheDep
) -> Response:
    """Final eval loss against LR at each width (the LR curves, each width's best marked,
    the latest transfer's fit when there is one) and every trial's training curve.

    Served from memory: at most `SWEEPER_CURVES_TTL_S` (1 s) old plus one read while a
    refresh is in flight; with an ETag, so a poller that sends If-None-Match gets 304 while
    nothing changed.
    """
    compute = partial(reader.read, sweep_id)
    entry = cache.serve(sweep_id, compute)
    if entry is None:  # nothing in memory: read the database, off the event loop
        entry = await run_in_threadpool(cache.get, sweep_id, compute)
    headers = {"ETag": entry.etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == entry.etag:
        return Response(status_code=304, headers=headers)
    return Response(entry.body, media_type="application/json", headers=headers)


@router.post(
    "/{sweep_id}/transfer",
    status_code=201,
    dependencies=[Writer],
    responses=ONE
    | {422: {"model": ErrorBody, "description": "to_width invalid, or nothing to fit"}},
)
def transfer(
    sweep_id: SweepId, body: TransferRequest, database: DatabaseDep, cache: CurvesCacheDep
) -> TransferView:
    """Fit each proxy width's optimum, measure the drift and give the target width's
    per-group LR and WD (stored as a transfer; the LR curves show its fit)."""
    transferred = service.transfer(
        database,
        sweep_id=sweep_id,
        to_width=body.to_width,
        to_tokens=body.to_tokens,
        to_depth=body.to_depth,
    )
    cache.drop(sweep_id)
    return transferred


@router.post("/{sweep_id}/cancel", dependencies=[Writer], responses=CHANGE)
def cancel_sweep(
    sweep_id: SweepId, database: DatabaseDep, settings: SettingsDep, cache: CurvesCacheDep
) -> SweepSummary:
    """Stop the sweep's trials (within seconds); what was recorded stays."""
    summary = service.cancel_sweep(database, sweep_id, settings)
    cache.drop(sweep_id)
    return summary


@router.post(
    "/{sweep_id}/resume",
    status_code=202,
    dependencies=[Writer],
    responses=CHANGE,
)
def resume_sweep(
    sweep_id: SweepId, database: DatabaseDep, settings: SettingsDep, cache: CurvesCacheDep
) -> SweepSummary:
    """Continue a sweep whose driver died, or that failed or was cancelled."""
    summary = service.resume_sweep(database, sweep_id, settings)
    cache.drop(sweep_id)
    return summary
