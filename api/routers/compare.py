"""/compare: sweeps side by side, as the comparison view draws them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.exceptions import RequestValidationError
from pydantic import Field, TypeAdapter, ValidationError

from api.deps import DatabaseDep, Reader
from api.errors import responses
from sweeper import service
from sweeper.service import MAX_ID

MAX_SWEEPS = 12  # panels a page can show side by side
router = APIRouter(
    prefix="/compare",
    tags=["compare"],
    dependencies=[Reader],
    responses=responses(401, 403, 404, 422, 503),
)

_SWEEP_IDS = TypeAdapter(
    Annotated[
        list[Annotated[int, Field(ge=1, le=MAX_ID)]],
        Field(min_length=1, max_length=MAX_SWEEPS),
    ]
)


async def compared_sweep_ids(
    sweep_ids: Annotated[
        str, Query(description=f"comma-separated sweep ids, 1 to {MAX_SWEEPS}", examples=["1,2"])
    ],
) -> list[int]:
    """The ids in the order given, each once."""
    parts = [part.strip() for part in sweep_ids.split(",")]
    try:
        ids = _SWEEP_IDS.validate_python(parts)
    except ValidationError as e:
        # Named as the query parameter, whichever item is at fault (errors.py formats it).
        errors = [
            err | {"loc": ("query", "sweep_ids"), "msg": _item_message(err, parts)}
            for err in e.errors()
        ]
        raise RequestValidationError(errors) from None
    return list(dict.fromkeys(ids))


def _item_message(error: Any, parts: list[str]) -> str:
    if not error["loc"]:  # the list itself: too long or empty
        return f"{error['msg']} (comma-separated ids)"
    return f"item {error['loc'][0] + 1} ({parts[error['loc'][0]]!r}): {error['msg']}"


@router.get("")
def compare(
    database: DatabaseDep, sweep_ids: Annotated[list[int], Depends(compared_sweep_ids)]
) -> service.Comparison:
    """Each sweep's LR curves per width with their fitted optima, the drift of the optima
    and its line out to every width the sweep was transferred to, and its transfers; a
    sweep at one width (an LR sweep at a target) gives its curve and optimum."""
    return service.Comparison(sweeps=service.compare_sweeps(database, sweep_ids))
