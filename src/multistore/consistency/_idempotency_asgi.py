"""``Idempotency-Key`` as plain ASGI 3 middleware (Starlette, FastAPI, any ASGI server).

For the methods it guards (POST and PATCH by default) the middleware runs the
application at most once per (client, key) and answers every retry with the stored
response, following draft-ietf-httpapi-idempotency-key-header and Stripe:

- Refused before anything runs, leaving no record (``application/problem+json``,
  ``type`` a URL of the docs page, ``Link: rel="describedby"``): no key where one
  is required, a malformed key or two ``Idempotency-Key`` fields (400); no
  identified client (400, unless ``anonymous=`` opts in); a body over
  ``max_request_body`` (413). A request whose body never arrives whole (the client
  disconnected) is not run and gets no answer.
- The key reused with another request: 422; the first request still running: 409
  with a short ``Retry-After``. Neither changes the record.
- The first request runs the app; its response (status, headers but hop-by-hop ones
  and ``Set-Cookie``, body) is stored whether or not it could be delivered, and a
  retry gets it with ``Idempotent-Replayed: true``. With ``store_server_errors``
  (the default, as Stripe) a 5xx, and an exception (stored as the 500 the client
  got), are stored too; without it they release the key and a retry runs again.

``idem`` is an :class:`Idempotency`, or a function of the request's scope that
returns one: an app whose stores open in its lifespan adds the middleware at import
time with ``idem=lambda scope: scope["state"]["idem"]`` (see docs/fastapi.md).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any, Final

from multistore.consistency._idempotency import (
    Idempotency,
    IdempotencyInProgressError,
    IdempotencyKeyMissingError,
    IdempotencyKeyReusedError,
    IdempotentRun,
    InvalidIdempotencyKeyError,
)
from multistore.consistency._idempotency_http import (
    DEFAULT_PROBLEM_DOCS,
    body_fingerprint,
    client_from_principal,
    parse_idempotency_key,
    problem,
    replayable_headers,
)
from multistore.errors import (
    ContentTooLargeError,
    IdempotencyClientUnknownError,
    InvalidValueError,
    MultistoreError,
    ResponseNotStoredError,
)

__all__ = ["IdempotencyMiddleware", "client_from_principal"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_CLAIM_ERRORS = (IdempotencyKeyReusedError, IdempotencyInProgressError)
_SERVER_ERROR: Final = b"Internal Server Error"


def _headers(scope: Scope, name: bytes) -> list[str]:
    return [
        bytes(value).decode("latin-1")
        for key, value in scope.get("headers", ())
        if bytes(key).lower() == name
    ]


class _Refused(Exception):
    """A request answered with a problem before anything ran."""

    def __init__(self, error: MultistoreError) -> None:
        super().__init__(error.message)
        self.error = error


class _Gone(Exception):
    """The client disconnected before its request body ended."""


class _Capture:
    """Forwards the app's response to the client and keeps a copy to store."""

    def __init__(self, send: Send, dropped: frozenset[bytes], limit: int) -> None:
        self.send = send
        self.dropped = dropped
        self.limit = limit
        self.status: int | None = None
        self.headers: list[list[str]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.complete = False
        self.unstorable = False
        """The body went past the limit, or came in a form a copy cannot be kept of."""
        self.undelivered: BaseException | None = None
        self.held: list[Message] = []
        """The response's last body message and what follows it (its trailers, when the
        start announced them), sent once the outcome is stored (:meth:`flush`): a
        client that retries as soon as it has the whole response gets the replay."""

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = int(message["status"])
            self.headers = replayable_headers(message.get("headers", ()), self.dropped)
        elif kind == "http.response.body":
            self.keep(bytes(message.get("body", b"")))
            self.complete = not message.get("more_body", False)
        elif kind == "http.response.pathsend":
            # The server sends the file; the copy to store is read from it here.
            self.keep(await asyncio.to_thread(_read_limited, message["path"], self.limit + 1))
            self.complete = True
        elif kind == "http.response.zerocopysend":  # a file descriptor: no copy to keep
            self.unstorable = True
            self.complete = not message.get("more_body", False)
        if self.complete and kind != "http.response.start":
            self.held.append(message)
            return
        await self._deliver(message)

    async def flush(self) -> None:
        """Send the held messages (after the outcome was stored, or failed to be)."""
        held, self.held = self.held, []
        for message in held:
            await self._deliver(message)

    async def _deliver(self, message: Message) -> None:
        if self.undelivered is None:
            try:
                await self.send(message)
            except OSError as exc:  # the client is gone: the outcome is stored anyway
                self.undelivered = exc

    def keep(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            self.unstorable = True
            self.chunks.clear()
        elif not self.unstorable:
            self.chunks.append(chunk)

    def response(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "headers": self.headers,
            "body": base64.b64encode(b"".join(self.chunks)).decode("ascii"),
        }


def _read_limited(path: str, size: int) -> bytes:
    with Path(path).open("rb") as file:
        return file.read(size)


class IdempotencyMiddleware:
    """Wrap an ASGI app so that guarded requests with the same ``Idempotency-Key``
    run once per client. See the module docstring for the responses, and
    docs/consistency/idempotency.md for each option."""

    def __init__(
        self,
        app: ASGIApp,
        idem: Idempotency | Callable[[Scope], Idempotency],
        *,
        methods: Iterable[str] = ("POST", "PATCH"),
        required: bool = True,
        client: Callable[[Scope], str | None] = client_from_principal,
        anonymous: str | None = None,
        header: str = "idempotency-key",
        bare_keys: bool = True,
        canonical_json: bool = True,
        store_server_errors: bool = True,
        drop_headers: Iterable[str] = ("set-cookie",),
        max_request_body: int = 1 << 20,
        max_response_body: int = 1 << 20,
        max_retry_after: float = 2.0,
        problem_docs: str = DEFAULT_PROBLEM_DOCS,
    ) -> None:
        if anonymous is not None and not 0 < len(anonymous) <= 255:
            raise InvalidValueError("anonymous= is a client scope of 1 to 255 characters")
        if max_request_body < 0 or max_response_body < 0 or not max_retry_after > 0:
            raise InvalidValueError("size limits must be >= 0 and max_retry_after positive")
        self.app = app
        self.idem = idem
        self.methods = frozenset(m.upper() for m in methods)
        self.required = required
        self.client = client
        self.anonymous = anonymous
        self.header = header.lower().encode("latin-1")
        self.bare_keys = bare_keys
        self.canonical_json = canonical_json
        self.store_server_errors = store_server_errors
        self.drop_headers = frozenset(h.lower().encode("latin-1") for h in drop_headers)
        self.max_request_body = max_request_body
        self.max_response_body = max_response_body
        self.max_retry_after = max_retry_after
        self.problem_docs = problem_docs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or scope.get("method") not in self.methods:
            await self.app(scope, receive, send)
            return
        try:
            key = parse_idempotency_key(_headers(scope, self.header), bare_keys=self.bare_keys)
            if key is None:
                if not self.required:
                    await self.app(scope, receive, send)
                    return
                raise _Refused(IdempotencyKeyMissingError("an Idempotency-Key is required"))
            client = self._client(scope)
            body = await self._read_body(scope, receive)
            payload = {
                "method": scope["method"],
                "path": scope.get("path", ""),
                "query": bytes(scope.get("query_string", b"")).decode("latin-1"),
                "body": body_fingerprint(
                    body,
                    next(iter(_headers(scope, b"content-type")), None),
                    next(iter(_headers(scope, b"content-encoding")), None),
                    canonical_json=self.canonical_json,
                ),
            }
            await self._guarded(scope, receive, send, key, client, body, payload)
        except InvalidIdempotencyKeyError as exc:
            await self._problem(send, exc)
        except _Refused as refused:
            await self._problem(send, refused.error)
        except _Gone:
            return  # nothing ran, nothing stored, nobody to answer

    def _client(self, scope: Scope) -> str:
        client = self.client(scope)
        if client is not None:
            return client
        if self.anonymous is not None:
            return self.anonymous
        raise _Refused(
            IdempotencyClientUnknownError(
                "this request has an Idempotency-Key but no identified client, so its "
                "key would be shared with every other unidentified client; authenticate"
            )
        )

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.max_request_body
        too_large = ContentTooLargeError(
            f"the request body is larger than the {limit} bytes an idempotent request may have"
        )
        for length in _headers(scope, b"content-length"):
            if length.strip().isdigit() and int(length) > limit:
                raise _Refused(too_large)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _Gone  # http.disconnect before the body ended
            chunk = bytes(message.get("body", b""))
            size += len(chunk)
            if size > limit:
                raise _Refused(too_large)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _guarded(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        key: str,
        client: str,
        body: bytes,
        payload: dict[str, Any],
    ) -> None:
        raised: BaseException | None = None
        entered = False
        capture: _Capture | None = None
        try:
            idem = self.idem if isinstance(self.idem, Idempotency) else self.idem(scope)
            async with idem.begin(key, payload, client=client) as run:
                entered = True
                if run.replayed:
                    await self._replay(send, run.result())
                    return
                capture = _Capture(send, self.drop_headers, self.max_response_body)
                try:
                    await self.app(scope, _replaying(body, receive), capture)
                except Exception as exc:
                    raised = exc
                    if capture.status is None:
                        # nothing sent yet: the client gets the 500 a server sends
                        await _server_error(capture)
                except BaseException as exc:
                    # Cancelled while the app ran (a server shutting down, a timeout):
                    # its effects may have happened, so, like a raised error, it is
                    # stored as a server error (with store_server_errors), not released
                    # for a retry to run it again. The cancellation goes on after.
                    if not self.store_server_errors:
                        run.discard()
                        raise
                    raised = exc
                self._store(run, capture)
        except _CLAIM_ERRORS as exc:
            if entered:
                raise
            await self._problem(send, exc)
        finally:
            if capture is not None:
                # The outcome is stored (or storing it failed): the response ends now.
                await capture.flush()
        if raised is not None:
            raise raised  # stored as the 500 it became; the server logs it

    def _store(self, run: IdempotentRun, capture: _Capture) -> None:
        """Set what the run stores: the response the client got (or would have got,
        had its connection not closed), or nothing (the key is released) for a
        server error when ``store_server_errors`` is off."""
        if not capture.complete:
            # The app raised, or returned without a whole response: the client got
            # a 500 (or a cut response) from the server.
            response = _server_error_response()
            if not self.store_server_errors:
                run.discard()
        elif capture.unstorable:
            error = ResponseNotStoredError(
                f"the first response to this key was larger than the {self.max_response_body} "
                "bytes stored for replay; the request ran once and its response cannot be "
                "sent again"
            )
            status, headers, body = problem(
                error, docs=self.problem_docs, max_retry_after=self.max_retry_after
            )
            response = {
                "status": status,
                "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers],
                "body": base64.b64encode(body).decode("ascii"),
            }
        else:
            response = capture.response()
        if capture.complete and (capture.status or 500) >= 500 and not self.store_server_errors:
            run.discard()  # the app's own 5xx (a response too large to store is kept)
        run.set_result(response)

    async def _problem(self, send: Send, error: MultistoreError) -> None:
        status, headers, body = problem(
            error, docs=self.problem_docs, max_retry_after=self.max_retry_after
        )
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _replay(self, send: Send, response: dict[str, Any]) -> None:
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in response["headers"]]
        headers.append((b"idempotent-replayed", b"true"))
        await send(
            {"type": "http.response.start", "status": response["status"], "headers": headers}
        )
        await send({"type": "http.response.body", "body": base64.b64decode(response["body"])})


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body read already, then the client's."""
    delivered = False

    async def replay_receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay_receive


def _server_error_response() -> dict[str, Any]:
    return {
        "status": 500,
        "headers": [["content-type", "text/plain; charset=utf-8"]],
        "body": base64.b64encode(_SERVER_ERROR).decode("ascii"),
    }


async def _server_error(capture: _Capture) -> None:
    """Send the 500 an ASGI server sends for an app that raised, through ``capture``
    (so a closed connection is noted, not raised)."""
    await capture(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [(b"content-type", b"text/plain; charset=utf-8")],
        }
    )
    await capture({"type": "http.response.body", "body": _SERVER_ERROR})
