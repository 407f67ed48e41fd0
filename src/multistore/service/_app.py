"""The FastAPI app: the shop's API, the console, ``/metrics``, one error format.

Requests pass, outermost first: telemetry (metrics, the request's time-series point,
its span) → session authentication and the rate limit → the idempotency middleware
(``POST /orders`` and ``POST /payments`` of authenticated users, keys scoped to the
user) → the problem guard (an unexpected exception becomes a 500 problem) → the
routes. The stores open in the lifespan, so the idempotency middleware is given a
function that finds the shop's :class:`~multistore.consistency.Idempotency` when a
request comes, not a store at import time.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.middleware import Middleware

from multistore import __version__
from multistore.config import Config, load_config
from multistore.consistency import Idempotency, IdempotencyMiddleware
from multistore.service._api import router
from multistore.service._asgi import ASGIApp, Receive, Scope, Send
from multistore.service._auth import Principal, SessionAuth, idempotency_client, shop_of
from multistore.service._console import console_router
from multistore.service._instruments import NO_INSTRUMENTS, Instruments
from multistore.service._problems import ProblemGuard, install_handlers, problem_response
from multistore.service._settings import ServiceSettings
from multistore.service._shop import Shop
from multistore.service._telemetry import Telemetry, TelemetryMiddleware

__all__ = ["GUARDED", "create_app"]

GUARDED: Final = frozenset({"/orders", "/payments"})
"""The paths whose POSTs run at most once per ``Idempotency-Key``."""


def _idempotency(scope: Scope) -> Idempotency:
    return shop_of(scope).idempotency


class IdempotentRoutes:
    """Sends the guarded POSTs of authenticated users through the idempotency
    middleware; an anonymous one goes straight on (and gets its 401)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.guarded = IdempotencyMiddleware(
            app,
            _idempotency,
            methods=("POST",),
            client=idempotency_client,
            # A 5xx is not stored: the order id comes from the key, so a retry that
            # runs again finds the first run's saga and finishes it.
            store_server_errors=False,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = scope.get("user")
        if (
            scope["type"] == "http"
            and scope.get("method") == "POST"
            and scope.get("path") in GUARDED
            and isinstance(principal, Principal)
            and principal.is_authenticated
        ):
            await self.guarded(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _load(config: Config | str | os.PathLike[str] | None) -> Config:
    return config if isinstance(config, Config) else load_config(config)


def create_app(
    config: Config | str | os.PathLike[str] | None = None,
    settings: ServiceSettings | None = None,
) -> FastAPI:
    """The shop as an ASGI app; the stores of ``config`` (a :class:`Config`, a path,
    or None for ``$MULTISTORE_CONFIG`` / ``./multistore.toml`` / embedded) open when
    the app starts and close when it stops."""
    settings = settings or ServiceSettings()
    telemetry = Telemetry(traces=settings.traces) if settings.telemetry else None
    instruments: Instruments = telemetry if telemetry is not None else NO_INSTRUMENTS

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        shop = await Shop.open(_load(config), settings, instruments=instruments)
        app.state.shop = shop
        try:
            yield
        finally:
            await shop.close()

    middleware = [Middleware(SessionAuth), Middleware(IdempotentRoutes), Middleware(ProblemGuard)]
    if telemetry is not None:

        def record(route: str, method: str, status: int, millis: float, at: datetime) -> None:
            shop: Shop | None = getattr(app.state, "shop", None)
            if shop is not None:
                shop.requests.record(route, method, status, millis, at)

        middleware.insert(0, Middleware(TelemetryMiddleware, telemetry=telemetry, record=record))

    options: dict[str, Any] = {}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        # FastAPI's own OpenTelemetry spans (newer versions) would trace requests
        # even with traces off; the service's telemetry does that itself.
        options["telemetry"] = {
            "tracing": False,
            "metrics": False,
            "logs": False,
            "operation_spans": False,
        }
    app = FastAPI(
        title="multistore shop",
        version=__version__,
        summary="The seed's e-commerce system over HTTP: polyglot stores, sagas, two-phase "
        "commit, idempotency keys, an outbox and multi-master carts.",
        lifespan=lifespan,
        middleware=middleware,
        **options,
    )
    app.state.settings = settings
    app.state.telemetry = telemetry
    install_handlers(app)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        return problem_response(500, "internal-error", "the server failed; it is logged")

    app.add_exception_handler(Exception, on_unexpected)
    app.include_router(router)
    app.include_router(console_router())
    if telemetry is not None:
        from multistore.service._metrics import metrics_router

        app.include_router(metrics_router(telemetry))
    return app
