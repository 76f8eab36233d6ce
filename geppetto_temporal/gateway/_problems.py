"""Every error as a JSON problem (RFC 9457, `application/problem+json`), never a stack trace."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from geppetto_temporal.errors import (
    ApprovalNotPendingError,
    ConfigurationError,
    GeppettoError,
    InvalidPromptError,
    InvalidSessionIdError,
    NotPausedError,
    PromptTooLargeError,
    SessionBusyError,
    SessionClosedError,
    SessionError,
    SessionNotFoundError,
)
from geppetto_temporal.gateway._cursor import BadEventIdError

PROBLEM_TYPE = "application/problem+json"
_log = logging.getLogger(__name__)

_TITLES = {
    400: "bad request",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    406: "not acceptable",
    409: "conflict",
    413: "content too large",
    415: "unsupported media type",
    422: "invalid request",
    500: "internal error",
    503: "unavailable",
}


class Problem(Exception):
    """An error answer: status, a short title and a clear detail, plus any extra members."""

    def __init__(self, status: int, detail: str, *, title: str | None = None, **extra: Any):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or _TITLES.get(status, "error")
        self.extra = extra


def problem_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {
        "type": "about:blank",
        "title": title or _TITLES.get(status, "error"),
        "status": status,
        "detail": detail,
        **{k: v for k, v in extra.items() if v is not None},
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_TYPE, headers=headers)


def problem_of(err: GeppettoError) -> Problem:
    """The HTTP problem a library error is."""
    detail = str(err)
    if isinstance(err, SessionNotFoundError):
        return Problem(404, detail, session_id=err.session_id)
    if isinstance(err, SessionBusyError):
        return Problem(
            409,
            detail,
            title="session busy",
            session_id=err.session_id,
            active_inference_id=err.active_inference_id,
        )
    if isinstance(err, SessionClosedError):
        return Problem(409, detail, title="session closed", session_id=err.session_id)
    if isinstance(err, PromptTooLargeError):
        return Problem(413, detail, title="prompt too large", size=err.size, limit=err.limit)
    if isinstance(err, InvalidPromptError | InvalidSessionIdError | ConfigurationError):
        return Problem(422, detail)
    if isinstance(err, ApprovalNotPendingError | NotPausedError):
        return Problem(409, detail)
    if isinstance(err, SessionError):
        return Problem(503, detail, session_id=err.session_id)
    return Problem(400, detail)


def install(app: FastAPI) -> None:
    """Problem handlers for the app's errors, its validation errors and anything unexpected."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.detail, title=exc.title, **exc.extra)

    @app.exception_handler(GeppettoError)
    async def _library(request: Request, exc: GeppettoError) -> JSONResponse:
        problem = problem_of(exc)
        return problem_response(
            problem.status, problem.detail, title=problem.title, **problem.extra
        )

    @app.exception_handler(BadEventIdError)
    async def _event_id(request: Request, exc: BadEventIdError) -> JSONResponse:
        return problem_response(400, str(exc), title="bad event id")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid"}
        where = ".".join(first["loc"][1:] if len(first["loc"]) > 1 else first["loc"])
        return problem_response(
            422, f"{where}: {first['msg']}" if where else str(first["msg"]), errors=errors
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else _TITLES.get(exc.status_code, "")
        return problem_response(exc.status_code, detail, headers=dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        _log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return problem_response(
            500, "the gateway failed to answer this request; its log has the details"
        )
