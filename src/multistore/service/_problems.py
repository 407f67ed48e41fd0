"""Every error as ``application/problem+json`` (RFC 9457), from one place.

- A :class:`~multistore.errors.MultistoreError` answers with its ``http_status``
  (422 for an invalid value or query, as for a request that does not validate); its
  type is ``urn:multistore:problem:<slug>`` (the error code's slug, or the service
  error's own), with ``code`` and ``outcome`` (definite: nothing happened;
  indeterminate: it may have) as extension members.
- A request that does not validate answers 422 with ``errors``: one entry per bad
  field, its location (``body.items.0.qty``) and what is wrong.
- An HTTP error of the framework (404 for an unknown path, 405) keeps its status.
- Anything else is a bug: 500 with a fixed text. The traceback goes to the log,
  never to the client.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from multistore.errors import InvalidQueryError, InvalidValueError, MultistoreError
from multistore.service._asgi import ASGIApp, Message, Receive, Scope, Send
from multistore.service._errors import RateLimitedError

__all__ = ["ProblemGuard", "install_handlers", "problem_response"]

log = logging.getLogger("multistore.service")

PROBLEM: Final = "application/problem+json"
_TITLES: Final = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def problem_body(
    status: int, slug: str, detail: str, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "type": f"urn:multistore:problem:{slug}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        **(extra or {}),
    }


def problem_response(
    status: int,
    slug: str,
    detail: str,
    extra: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    body = json.dumps(problem_body(status, slug, detail, extra), default=str)
    return Response(body, status_code=status, media_type=PROBLEM, headers=dict(headers or {}))


def error_response(exc: MultistoreError, instance: str | None = None) -> Response:
    slug = getattr(type(exc), "slug", None) or exc.code.slug
    extra: dict[str, Any] = {"code": int(exc.code), "outcome": exc.outcome.value}
    order_id = getattr(exc, "order_id", None)
    if order_id:
        extra["order"] = order_id
        extra["instance"] = f"/orders/{order_id}"
    status = exc.http_status
    if isinstance(exc, InvalidValueError | InvalidQueryError):
        status = 422  # as the request validation's: the input is understood but wrong
    headers = {}
    if isinstance(exc, RateLimitedError):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return problem_response(status, slug, exc.message, extra, headers)


def _location(loc: Any) -> str:
    return ".".join(str(part) for part in loc)


def install_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app`` (the 500 one is :class:`ProblemGuard`'s job)."""

    async def on_multistore(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, MultistoreError)
        if exc.http_status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, exc)
        return error_response(exc)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"field": _location(e.get("loc", ())), "message": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        fields = ", ".join(e["field"] for e in errors) or "the request"
        return problem_response(
            422, "invalid-request", f"invalid value in {fields}", {"errors": errors}
        )

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        slug = _TITLES.get(exc.status_code, "error").lower().replace(" ", "-")
        return problem_response(exc.status_code, slug, str(exc.detail), headers=headers)

    app.add_exception_handler(MultistoreError, on_multistore)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)


class ProblemGuard:
    """ASGI middleware: an exception that escapes the app becomes a 500 problem (if no
    response started yet), logged with its traceback. Put it inside the idempotency
    middleware, so that what a retry may replay is the problem the client got."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if started:
                raise
            response = problem_response(
                500, "internal-error", "the server failed to answer this request; it is logged"
            )
            await response(scope, receive, send)
