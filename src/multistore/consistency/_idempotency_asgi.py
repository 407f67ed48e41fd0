"""``Idempotency-Key`` as plain ASGI 3 middleware (Starlette, FastAPI, any ASGI server).

For the methods it guards (POST and PATCH by default) the middleware reads the
header, fingerprints the request (method, path, query string and a SHA-256 of the
body), and runs the application at most once per (client, key):

- no header: 400 when ``required`` (else the request passes through unguarded);
  a malformed key: 400; the key reused with another request: 422; the first
  request still running: 409 with ``Retry-After`` — all ``application/problem+json``;
- the first request runs the app and its response (status, a subset of headers,
  body) is stored; a retry gets the stored response with ``Idempotent-Replayed: true``;
- a 5xx response or an exception in the app is not stored (unless
  ``store_server_errors``): the key is released and a retry runs again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from multistore.consistency._idempotency import (
    Idempotency,
    IdempotencyInProgressError,
    IdempotencyKeyMissingError,
    IdempotencyKeyReusedError,
    InvalidIdempotencyKeyError,
)
from multistore.errors import MultistoreError

__all__ = ["IdempotencyMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_KEY_ERRORS = (
    IdempotencyKeyMissingError,
    InvalidIdempotencyKeyError,
    IdempotencyKeyReusedError,
    IdempotencyInProgressError,
)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if bytes(key).lower() == name:
            return bytes(value).decode("latin-1")
    return None


def client_from_authorization(scope: Scope) -> str:
    """The default client scope: a hash of the ``Authorization`` header, or
    ``anonymous`` without one. Pass your own (e.g. the authenticated user id)."""
    auth = _header(scope, b"authorization")
    if auth is None:
        return "anonymous"
    return "auth:" + hashlib.sha256(auth.encode("latin-1")).hexdigest()


async def send_problem(send: Send, error: MultistoreError, status: int) -> None:
    """Send ``error`` as an ``application/problem+json`` response."""
    body = json.dumps({**error.to_problem(), "status": status}).encode()
    headers = [(b"content-type", b"application/problem+json")]
    if isinstance(error, IdempotencyInProgressError):
        headers.append((b"retry-after", str(max(1, math.ceil(error.retry_after))).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class IdempotencyMiddleware:
    """Wrap an ASGI app so that guarded requests with the same ``Idempotency-Key``
    run once. See the module docstring for the responses."""

    def __init__(
        self,
        app: ASGIApp,
        idem: Idempotency,
        *,
        methods: Iterable[str] = ("POST", "PATCH"),
        required: bool = True,
        client: Callable[[Scope], str] = client_from_authorization,
        header: str = "idempotency-key",
        replay_headers: Iterable[str] = ("content-type", "location", "etag"),
        store_server_errors: bool = False,
    ) -> None:
        self.app = app
        self.idem = idem
        self.methods = frozenset(m.upper() for m in methods)
        self.required = required
        self.client = client
        self.header = header.lower().encode("latin-1")
        self.replay_headers = frozenset(h.lower().encode("latin-1") for h in replay_headers)
        self.store_server_errors = store_server_errors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or scope.get("method") not in self.methods:
            await self.app(scope, receive, send)
            return
        key = _header(scope, self.header)
        if key is None and not self.required:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        payload = {
            "method": scope["method"],
            "path": scope.get("path", ""),
            "query": bytes(scope.get("query_string", b"")).decode("latin-1"),
            "body": hashlib.sha256(body).hexdigest(),
        }
        entered = False
        try:
            async with self.idem.begin(key, payload, client=self.client(scope)) as run:
                entered = True
                if run.replayed:
                    await self._replay(send, run.result())
                    return
                try:
                    response = await self._run_app(scope, body, receive, send)
                except BaseException:
                    run.discard()
                    raise
                if response["status"] >= 500 and not self.store_server_errors:
                    run.discard()
                run.set_result(response)
        except _KEY_ERRORS as exc:
            if entered:
                raise
            await send_problem(send, exc, exc.http_status)

    async def _run_app(
        self, scope: Scope, body: bytes, receive: Receive, send: Send
    ) -> dict[str, Any]:
        delivered = False

        async def replay_receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        status = 500
        headers: list[list[str]] = []
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for name, value in message.get("headers", ()):
                    if bytes(name).lower() in self.replay_headers:
                        headers.append(
                            [bytes(name).decode("latin-1"), bytes(value).decode("latin-1")]
                        )
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))
            await send(message)

        await self.app(scope, replay_receive, capture)
        return {
            "status": status,
            "headers": headers,
            "body": base64.b64encode(b"".join(chunks)).decode("ascii"),
        }

    async def _replay(self, send: Send, response: dict[str, Any]) -> None:
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in response["headers"]]
        headers.append((b"idempotent-replayed", b"true"))
        await send(
            {"type": "http.response.start", "status": response["status"], "headers": headers}
        )
        await send({"type": "http.response.body", "body": base64.b64decode(response["body"])})


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(bytes(message.get("body", b"")))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)
