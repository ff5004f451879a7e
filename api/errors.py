"""Every error leaves as JSON (`schemas.ErrorBody`): a code, the reason, and the field.

Storage errors map to statuses here and nowhere else: `NotFound` 404, `Conflict` 409, any
other `StorageError` 503; the service's `InvalidInput` is 422 with its field. A request that
fails validation answers 422 naming each field by its dotted path inside the body
(``widths``, ``search.lr.max``) or its query/path name. `responses` documents these in the
OpenAPI schema, so that every status a route can answer is in it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.schemas import ErrorBody, FieldError
from sweeper import service

log = logging.getLogger(__name__)

_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    422: "invalid",
    500: "internal",
    503: "unavailable",
}
_MEANINGS = {
    401: "no token",
    403: "wrong token",
    404: "no such sweep, run or transfer (the reason names it)",
    409: "the job is not in a state that allows it (the reason says which)",
    422: "the request is invalid (the field is named)",
    503: "the database did not answer (locked, restarting): try again",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI description of error statuses a route can answer (`ErrorBody` each)."""
    return {s: {"model": ErrorBody, "description": _MEANINGS[s]} for s in statuses}


def error_response(
    status: int,
    reason: str,
    *,
    errors: Sequence[FieldError] = (),
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    code = _CODES.get(status) or HTTPStatus(status).phrase.lower().replace(" ", "_")
    body = ErrorBody(
        error=code,
        reason=reason,
        field=errors[0].field if errors else None,
        errors=list(errors),
    )
    return JSONResponse(
        body.model_dump(), status_code=status, headers=dict(headers) if headers else None
    )


def field_errors(errors: Sequence[Any]) -> list[FieldError]:
    """Pydantic's errors as (dotted field, reason); the request part (body, query) is dropped
    unless it is all there is (a body that is not JSON at all)."""
    out = []
    for e in errors:
        loc = [str(part) for part in e.get("loc", ())]
        if len(loc) > 1 and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
        reason = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        if e.get("type") == "json_invalid":  # loc is (body, byte offset)
            loc, reason = ["body"], f"not valid JSON: {e.get('ctx', {}).get('error', reason)}"
        out.append(FieldError(field=".".join(loc) or None, reason=reason))
    return out


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = field_errors(exc.errors())
        first = errors[0] if errors else FieldError(field=None, reason="invalid request")
        reason = f"{first.field}: {first.reason}" if first.field else first.reason
        return error_response(422, reason, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI could not read the body (not UTF-8 text)
            cause = exc.__cause__ or exc
            reason = f"not valid JSON: {type(cause).__name__}: {cause}"
            return error_response(
                422, f"body: {reason}", errors=[FieldError(field="body", reason=reason)]
            )
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(service.InvalidInput)
    async def _refused(request: Request, exc: service.InvalidInput) -> JSONResponse:
        errors = [FieldError(field=exc.field, reason=exc.message)]
        return error_response(422, str(exc), errors=errors)

    @app.exception_handler(service.NotFound)
    async def _not_found(request: Request, exc: service.NotFound) -> JSONResponse:
        return error_response(404, str(exc))

    @app.exception_handler(service.Conflict)
    async def _conflict(request: Request, exc: service.Conflict) -> JSONResponse:
        return error_response(409, str(exc))

    @app.exception_handler(ValidationError)
    async def _stored_invalid(request: Request, exc: ValidationError) -> JSONResponse:
        # Not the request (that is RequestValidationError): a stored document that no longer
        # validates, e.g. a sweep whose data file has been removed since it ran.
        log.error("%s %s: stored data does not validate: %s", request.method, request.url, exc)
        errors = field_errors(exc.errors())
        first = errors[0].reason if errors else str(exc)
        return error_response(500, f"stored {exc.title} no longer validates: {first}")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); see the service log")

    @app.exception_handler(service.StorageError)
    async def _storage(request: Request, exc: service.StorageError) -> JSONResponse:
        log.error("storage error on %s %s: %s", request.method, request.url.path, exc)
        return error_response(503, f"the database could not answer: {exc}")
