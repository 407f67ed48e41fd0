"""The server side of the idempotency suite over real HTTP (``test_idempotency_http.py``):
a Starlette app wired as docs/consistency/idempotency.md shows, run by uvicorn in a
process of its own (``uvicorn --factory tests.consistency.idem_http_app:create_app``).

Environment: ``IDEM_URL`` and ``IDEM_MODEL`` (the idempotency store), ``IDEM_SIDE`` (a
SQLite file: the handler writes one row per execution to ``executions`` and waits for
rows in ``gates``; the test reads and writes it directly).

``POST /orders`` takes JSON: ``{"wait": "g"}`` waits until gate ``g`` is open,
``{"status": 503}`` answers with that status, ``{"raise": true}`` raises. The same
handler is served under prefixes that pick the middleware's options: ``/released``
(``store_server_errors=False``), ``/short`` (records expire after 1 s), ``/public``
(``anonymous="public"``). ``Authorization: Bearer <user>:<token>`` authenticates
``<user>`` (any token), through Starlette's ``AuthenticationMiddleware``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from multistore.consistency import Idempotency, IdempotencyMiddleware, IdempotencyPolicy
from multistore.stores import open_store

SIDE_SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    idem_key TEXT, path TEXT, body TEXT
);
CREATE TABLE IF NOT EXISTS gates (name TEXT PRIMARY KEY);
"""


def side_db(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


class BearerUser(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        scheme, _, credentials = conn.headers.get("authorization", "").partition(" ")
        user, sep, token = credentials.partition(":")
        if scheme.lower() != "bearer" or not sep or not user or not token:
            return None
        return AuthCredentials(["authenticated"]), SimpleUser(user)


class Variants:
    """One :class:`IdempotencyMiddleware` per path prefix, each with its options."""

    def __init__(self, app: Any, *, state: dict[str, Any]) -> None:
        self.app = app
        self.state = state
        self.built: dict[str, IdempotencyMiddleware] = {}

    def middleware(self, prefix: str) -> IdempotencyMiddleware:
        if prefix not in self.built:
            idem, short = self.state["idem"], self.state["short"]
            options: dict[str, dict[str, Any]] = {
                "": {},
                "released": {"store_server_errors": False},
                "short": {},
                "public": {"anonymous": "public"},
            }
            chosen = short if prefix == "short" else idem
            self.built[prefix] = IdempotencyMiddleware(self.app, chosen, **options[prefix])
        return self.built[prefix]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        first = scope["path"].strip("/").split("/")[0]
        prefix = first if first in ("released", "short", "public") else ""
        await self.middleware(prefix)(scope, receive, send)


async def orders(request: Request) -> Response:
    body = await request.body()
    data = json.loads(body or b"{}")
    side = request.app.state.side
    cursor = side.execute(
        "INSERT INTO executions (idem_key, path, body) VALUES (?, ?, ?)",
        (request.headers.get("idempotency-key"), request.url.path, body.decode()),
    )
    execution = cursor.lastrowid
    gate = data.get("wait")
    if gate is not None:
        deadline = time.monotonic() + 60
        while side.execute("SELECT 1 FROM gates WHERE name = ?", (gate,)).fetchone() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"gate {gate!r} was not opened within 60 s")
            await asyncio.sleep(0.02)
    if data.get("raise"):
        raise RuntimeError(f"execution {execution} failed after its effects")
    status = int(data.get("status", 201))
    # ASCII escapes: an order may hold a lone surrogate escape, which UTF-8 cannot encode
    echo = json.dumps({"execution": execution, "order": data})
    response = Response(echo, status_code=status, media_type="application/json")
    response.headers["location"] = f"/orders/{execution}"
    response.headers["cache-control"] = "no-store"
    response.headers["x-execution"] = str(execution)
    response.set_cookie("session", f"s{execution}")
    return response


async def health(request: Request) -> Response:
    return PlainTextResponse("ok")


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    store = await open_store(os.environ["IDEM_URL"], model=os.environ["IDEM_MODEL"])
    side = side_db(os.environ["IDEM_SIDE"])
    app.state.side = side
    state = app.state.variants
    state["idem"] = Idempotency(store, policy=IdempotencyPolicy(lease=30))
    state["short"] = Idempotency(store, policy=IdempotencyPolicy(expires_after=1, lease=0.5))
    try:
        yield
    finally:
        await store.close()
        side.close()


def create_app() -> Starlette:
    state: dict[str, Any] = {}
    paths = ["/orders", "/released/orders", "/short/orders", "/public/orders"]
    app = Starlette(
        routes=[Route("/health", health), *(Route(p, orders, methods=["POST"]) for p in paths)],
        middleware=[
            Middleware(AuthenticationMiddleware, backend=BearerUser()),
            Middleware(Variants, state=state),
        ],
        lifespan=lifespan,
    )
    app.state.variants = state
    return app
