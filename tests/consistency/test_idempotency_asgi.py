"""The ``Idempotency-Key`` ASGI middleware, driven message by message (the suite over a
real HTTP server is ``test_idempotency_http.py``): what is refused before anything
runs, what is stored and replayed, and how the key, the client and the fingerprint
are read. On the SQLite key-value store; the record logic is the same on every
backend (``test_idempotency.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from multistore.consistency import (
    Idempotency,
    IdempotencyMiddleware,
    IdempotencyPolicy,
    client_from_principal,
    current_run,
)
from multistore.consistency._idempotency_http import parse_idempotency_key, parse_sf_string
from multistore.errors import InvalidIdempotencyKeyError
from multistore.stores import open_store

DOCS = "https://multistore.readthedocs.io/en/latest/consistency/idempotency/"


@contextlib.asynccontextmanager
async def opened(
    tmp_path: Path, policy: IdempotencyPolicy | None = None
) -> AsyncIterator[Idempotency]:
    store = await open_store(f"sqlite:///{tmp_path / 'idem.db'}", model="kv")
    try:
        yield Idempotency(store, policy=policy or IdempotencyPolicy())
    finally:
        await store.close()


class User:
    """What an authentication middleware (Starlette's) puts in ``scope["user"]``."""

    is_authenticated = True

    def __init__(self, name: str) -> None:
        self.identity = name


class CountingApp:
    """POST /orders: 201 with a JSON body, a Location and a few other headers."""

    def __init__(self) -> None:
        self.calls = 0
        self.bodies: list[bytes] = []
        self.status = 201
        self.extra_headers: list[tuple[bytes, bytes]] = []
        self.body: bytes | None = None
        self.fail: Exception | None = None
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        self.entered.set()
        message = await receive()
        self.bodies.append(message["body"])
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        body = self.body
        if body is None:
            body = json.dumps({"call": self.calls, "echo": message["body"].decode()}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"location", f"/orders/{self.calls}".encode()),
                    *self.extra_headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


Headers = list[tuple[bytes, bytes]]


async def call(
    app: Any,
    method: str = "POST",
    *,
    key: str | None = "k1",
    keys: list[str] | None = None,
    body: bytes = b"{}",
    user: str | None = "alice",
    headers: Headers | None = None,
    content_type: bytes = b"application/json",
    messages: list[dict[str, Any]] | None = None,
    send_error: BaseException | None = None,
    extensions: dict[str, Any] | None = None,
) -> tuple[int | None, dict[str, str], bytes]:
    """One request through ``app``; (status, headers, body) as sent (None: nothing)."""
    fields: Headers = [(b"content-type", content_type), *(headers or [])]
    for k in keys if keys is not None else ([] if key is None else [key]):
        fields.append((b"idempotency-key", k.encode()))
    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": "/orders",
        "query_string": b"",
        "headers": fields,
        "extensions": extensions or {},
    }
    if user is not None:
        scope["user"] = User(user)
    chunks = messages
    if chunks is None:
        chunks = [
            {"type": "http.request", "body": body[:1], "more_body": True},
            {"type": "http.request", "body": body[1:], "more_body": False},
        ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if chunks:
            return chunks.pop(0)
        await asyncio.Event().wait()  # a live client sends nothing more
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if send_error is not None:
            raise send_error
        sent.append(message)

    await app(scope, receive, send)
    if not sent:
        return None, {}, b""
    start = sent[0]
    assert start["type"] == "http.response.start"
    out = {bytes(k).decode(): bytes(v).decode() for k, v in start["headers"]}
    return start["status"], out, b"".join(m.get("body", b"") for m in sent[1:])


def run(coro: Any) -> None:
    asyncio.run(coro)


# -- refused before anything runs: no record -------------------------------------------


def test_truncated_body_is_not_run_and_leaves_no_record(tmp_path: Path) -> None:
    """The client disconnects before its body ends: the app must not run on half a
    body (its answer would be stored and the client's correct retry get 422)."""

    async def body() -> None:
        async with opened(tmp_path) as idem:
            inner = CountingApp()
            app = IdempotencyMiddleware(inner, idem)
            cut = [
                {"type": "http.request", "body": b'{"sku":', "more_body": True},
                {"type": "http.disconnect"},
            ]
            status, _, _ = await call(app, messages=cut)
            assert status is None and inner.calls == 0
            assert await idem.get("k1", client="user:alice") is None
            status, headers, _ = await call(app, body=b'{"sku": "A"}')
            assert status == 201 and "idempotent-replayed" not in headers
            assert inner.bodies == [b'{"sku": "A"}']

    run(body())


def test_requests_without_an_identified_client_are_refused(tmp_path: Path) -> None:
    """Every unauthenticated request shared one scope, so one anonymous client got
    another's stored response. Now: 400 unless the app opts in with ``anonymous=``."""

    async def body() -> None:
        async with opened(tmp_path) as idem:
            inner = CountingApp()
            app = IdempotencyMiddleware(inner, idem)
            status, headers, raw = await call(app, user=None, body=b'{"card": "mine"}')
            assert status == 400 and headers["content-type"] == "application/problem+json"
            assert json.loads(raw)["title"] == "IdempotencyClientUnknownError"
            # an Authorization header alone identifies nobody: it is a credential
            status, _, _ = await call(app, user=None, headers=[(b"authorization", b"Bearer x")])
            assert status == 400 and inner.calls == 0

            shared = IdempotencyMiddleware(inner, idem, anonymous="public")
            assert (await call(shared, user=None))[0] == 201
            assert inner.calls == 1
            own = IdempotencyMiddleware(inner, idem, client=lambda scope: "session:42")
            status, headers, _ = await call(own, user=None)
            assert status == 201 and "idempotent-replayed" not in headers
            assert inner.calls == 2

    run(body())


def test_request_body_over_the_limit_is_413_and_leaves_no_record(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path) as idem:
            inner = CountingApp()
            app = IdempotencyMiddleware(inner, idem)
            big = b'"' + b"x" * (1 << 20) + b'"'
            status, headers, raw = await call(app, body=big)
            assert status == 413 and headers["content-type"] == "application/problem+json"
            assert json.loads(raw)["type"] == DOCS + "#content-too-large"
            # refused from Content-Length alone, before the body is read
            declared = [(b"content-length", str(len(big)).encode())]
            status, _, _ = await call(app, headers=declared, messages=[])
            assert status == 413
            assert inner.calls == 0 and await idem.get("k1", client="user:alice") is None
            small = IdempotencyMiddleware(inner, idem, max_request_body=10)
            assert (await call(small, body=b'{"a": 123}'))[0] == 201
            assert (await call(small, key="k2", body=b'{"a": 1234}'))[0] == 413

    run(body())


# -- the key, the client, the fingerprint ------------------------------------------------


def test_key_is_parsed_as_a_structured_field_string(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path) as idem:
            inner = CountingApp()
            app = IdempotencyMiddleware(inner, idem)
            assert (await call(app, key='"abc"'))[0] == 201
            for same in ["abc", ' "abc" ', '"abc";client=1', '"abc"; a="b";c=?1;d=-1.5']:
                status, headers, _ = await call(app, key=same)
                assert (status, headers.get("idempotent-replayed")) == (201, "true"), same
            assert (await call(app, key='"a b"'))[0] == 201  # a space is a valid key
            assert (await call(app, key='"q\\"uo\\\\te"'))[0] == 201
            assert await idem.get('q"uo\\te', client="user:alice") is not None
            assert inner.calls == 3
            for bad in [
                '"abc',
                '"abc" x',
                '"a\\b"',
                '"tab\t"',
                '"x";',
                '"x";A=1',
                "a b",
                'a"b',
                '""',
            ]:
                status, _, raw = await call(app, key=bad)
                assert status == 400, bad
                assert json.loads(raw)["title"] == "InvalidIdempotencyKeyError"
            status, _, raw = await call(app, keys=['"abc"', '"abd"'])
            assert status == 400 and "2 Idempotency-Key fields" in json.loads(raw)["detail"]
            strict = IdempotencyMiddleware(inner, idem, bare_keys=False)
            assert (await call(strict, key="abc"))[0] == 400
            assert (await call(strict, key='"abc"'))[1]["idempotent-replayed"] == "true"
            assert inner.calls == 3

    run(body())


def test_sf_string_parser() -> None:
    assert parse_sf_string('"8e03978e-40d5-43e8-bc93-6894a57f9324"') == (
        "8e03978e-40d5-43e8-bc93-6894a57f9324"
    )
    assert parse_sf_string('"";x') == ""
    assert parse_sf_string('"a";b=:AQID:;c=tok/en;d=12.345') == "a"
    for bad in ["abc", '"a', '"a"b', '"\u00e9"', '"a";x=1.2345', '"a";x=?2', '"a",  "b"']:
        with pytest.raises(InvalidIdempotencyKeyError):
            parse_sf_string(bad)
    assert parse_idempotency_key([]) is None
    assert parse_idempotency_key(["k-1"]) == "k-1"
    with pytest.raises(InvalidIdempotencyKeyError):
        parse_idempotency_key(["k-1"], bare_keys=False)


def test_default_client_is_the_principal_not_the_credential(tmp_path: Path) -> None:
    """A retry after a token refresh is the same client: the scope is the user an
    authentication middleware identified, never a hash of the Authorization header."""

    async def body() -> None:
        async with opened(tmp_path) as idem:
            inner = CountingApp()
            tokens = {b"Bearer token-1": "alice", b"Bearer token-2": "alice", b"Bearer b": "bob"}

            async def authenticated(scope: Any, receive: Any, send: Any) -> None:
                header = dict(scope["headers"]).get(b"authorization")
                if header in tokens:
                    scope = {**scope, "user": User(tokens[header])}
                await IdempotencyMiddleware(inner, idem)(scope, receive, send)

            async def as_token(token: bytes) -> dict[str, str]:
                auth = [(b"authorization", token)]
                status, headers, _ = await call(authenticated, user=None, headers=auth)
                assert status == 201
                return headers

            assert "idempotent-replayed" not in await as_token(b"Bearer token-1")
            assert (await as_token(b"Bearer token-2"))["idempotent-replayed"] == "true"
            assert "idempotent-replayed" not in await as_token(b"Bearer b")
            assert inner.calls == 2

    run(body())
    assert client_from_principal({"user": User("x" * 300)}) == "user#" + (
        __import__("hashlib").sha256(b"x" * 300).hexdigest()
    )

    class Anonymous:
        is_authenticated = False
        identity = "nobody"

    class SimpleUser:  # Starlette's: a display name, no identity
        is_authenticated = True

        @property
        def identity(self) -> str:
            raise NotImplementedError

        display_name = "carol"

    assert client_from_principal({"user": Anonymous()}) is None
    assert client_from_principal({}) is None
    assert client_from_principal({"user": SimpleUser()}) == "user:carol"


def test_json_bodies_are_compared_in_canonical_form(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path) as idem:
            inner = CountingApp()
            app = IdempotencyMiddleware(inner, idem)
            assert (await call(app, body=b'{"amount": 10, "currency": "eur"}'))[0] == 201
            same = b'{\n  "currency": "eur",\n  "amount": 10\n}'
            status, headers, _ = await call(app, body=same)
            assert (status, headers["idempotent-replayed"]) == (201, "true")
            for other in [
                b'{"amount": 11, "currency": "eur"}',
                b'{"amount": 10.0, "currency": "eur"}',
            ]:
                assert (await call(app, body=other))[0] == 422
            # duplicate names, or a body that is not JSON, are compared as bytes
            assert (await call(app, key="d", body=b'{"a": 1, "a": 2}'))[0] == 201
            assert (await call(app, key="d", body=b'{"a":1,"a":2}'))[0] == 422
            form = b"application/x-www-form-urlencoded"
            assert (await call(app, key="f", body=b"a=1&b=2", content_type=form))[0] == 201
            assert (await call(app, key="f", body=b"b=2&a=1", content_type=form))[0] == 422
            raw = IdempotencyMiddleware(inner, idem, canonical_json=False)
            assert (await call(raw, key="r", body=b'{"a": 1}'))[0] == 201
            assert (await call(raw, key="r", body=b'{"a":1}'))[0] == 422
            assert inner.calls == 4

    run(body())


# -- problem details -------------------------------------------------------------------


def test_problems_link_to_their_documentation(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path) as idem:
            inner = CountingApp()
            app = IdempotencyMiddleware(inner, idem)
            status, headers, raw = await call(app, key=None)
            problem = json.loads(raw)
            assert status == 400 and problem["status"] == 400
            assert problem["type"] == DOCS + "#idempotency-key-missing"
            assert headers["link"] == f'<{DOCS}>; rel="describedby"; type="text/html"'
            await call(app, body=b'{"a": 1}')
            assert json.loads((await call(app, body=b'{"a": 2}'))[2])["type"] == (
                DOCS + "#idempotency-key-reused"
            )
            own = "https://api.example.com/docs/idempotency"
            mine = IdempotencyMiddleware(inner, idem, problem_docs=own)
            status, headers, raw = await call(mine, key="bad\tkey")
            assert json.loads(raw)["type"] == own + "#invalid-idempotency-key"
            assert headers["link"].startswith(f"<{own}>")

    run(body())


def test_in_progress_is_409_with_a_short_retry_after(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path, IdempotencyPolicy(lease=30)) as idem:
            inner = CountingApp()
            inner.gate = asyncio.Event()
            app = IdempotencyMiddleware(inner, idem)
            first = asyncio.create_task(call(app, key="k9"))
            await inner.entered.wait()
            status, headers, raw = await call(app, key="k9")
            assert status == 409 and json.loads(raw)["type"] == DOCS + "#idempotency-in-progress"
            assert headers["retry-after"] == "2"  # not the 30 s lease
            patient = IdempotencyMiddleware(inner, idem, max_retry_after=10)
            assert (await call(patient, key="k9"))[1]["retry-after"] == "10"
            inner.gate.set()
            assert (await first)[0] == 201
            # the same key from another client is its own request
            status, headers, _ = await call(app, key="k9", user="bob")
            assert status == 201 and "idempotent-replayed" not in headers
            assert inner.calls == 2

    run(body())


# -- what is stored ----------------------------------------------------------------------


def test_outcome_is_stored_when_it_cannot_be_delivered(tmp_path: Path) -> None:
    """``send()`` raising OSError (the connection closed) is not the app failing: the
    outcome it computed is stored, and the client's retry gets it without a rerun."""

    async def body() -> None:
        async with opened(tmp_path) as idem:
            inner = CountingApp()
            app = IdempotencyMiddleware(inner, idem)
            status, _, _ = await call(app, send_error=ConnectionResetError("peer closed"))
            assert status is None and inner.calls == 1
            status, headers, raw = await call(app)
            assert (status, headers["idempotent-replayed"]) == (201, "true")
            assert json.loads(raw)["call"] == 1 and inner.calls == 1

    run(body())


def test_a_retry_sent_once_the_response_arrived_is_replayed_not_409(tmp_path: Path) -> None:
    """The outcome is stored before the response's last message goes out: a client that
    retries as soon as it has the whole response gets the replay, never "in progress"."""

    async def body() -> None:
        async with opened(tmp_path) as idem:
            inner = CountingApp()
            app = IdempotencyMiddleware(inner, idem)
            retried: list[tuple[int | None, dict[str, str]]] = []
            scope: dict[str, Any] = {
                "type": "http",
                "method": "POST",
                "path": "/orders",
                "query_string": b"",
                "headers": [(b"content-type", b"application/json"), (b"idempotency-key", b"k1")],
                "extensions": {},
                "user": User("alice"),
            }
            chunks = [{"type": "http.request", "body": b"{}", "more_body": False}]

            async def receive() -> dict[str, Any]:
                if chunks:
                    return chunks.pop(0)
                await asyncio.Event().wait()
                raise AssertionError("unreachable")

            async def send(message: dict[str, Any]) -> None:
                last = message["type"] == "http.response.body" and not message.get("more_body")
                if last:  # the client has the whole response now, and retries at once
                    status, headers, _ = await call(app)
                    retried.append((status, headers))

            await app(scope, receive, send)
            ((status, headers),) = retried
            assert (status, headers.get("idempotent-replayed")) == (201, "true")
            assert inner.calls == 1

    run(body())


def test_server_errors_and_exceptions_are_stored_by_default(tmp_path: Path) -> None:
    """As Stripe: once the request started executing its outcome is stored, a 5xx and
    an exception (as the 500 the client got) included; the exception still reaches
    the server."""

    async def body() -> None:
        async with opened(tmp_path) as idem:
            inner = CountingApp()
            app = IdempotencyMiddleware(inner, idem)
            inner.fail = RuntimeError("the ledger write failed after the charge")
            with pytest.raises(RuntimeError, match="after the charge"):
                await call(app, key="raise")
            inner.fail = None
            status, headers, raw = await call(app, key="raise")
            assert (status, headers["idempotent-replayed"], raw) == (
                500,
                "true",
                b"Internal Server Error",
            )
            inner.status = 503
            assert (await call(app, key="503"))[0] == 503
            inner.status = 201
            status, headers, _ = await call(app, key="503")
            assert (status, headers["idempotent-replayed"]) == (503, "true")
            assert inner.calls == 2

    run(body())


def test_server_errors_release_the_key_when_not_stored(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path) as idem:
            inner = CountingApp()
            app = IdempotencyMiddleware(inner, idem, store_server_errors=False)
            inner.status = 503
            assert (await call(app))[0] == 503
            inner.fail = RuntimeError("boom")
            with pytest.raises(RuntimeError):
                await call(app)
            inner.fail, inner.status = None, 201
            status, headers, _ = await call(app)
            assert status == 201 and "idempotent-replayed" not in headers
            assert (await call(app))[1]["idempotent-replayed"] == "true"
            inner.status = 422  # a 4xx is the app's answer: stored
            assert (await call(app, key="4xx"))[0] == 422
            inner.status = 201
            assert (await call(app, key="4xx"))[0] == 422
            assert inner.calls == 4

    run(body())


def test_replay_keeps_every_header_but_hop_by_hop_and_set_cookie(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path) as idem:
            inner = CountingApp()
            inner.extra_headers = [
                (b"cache-control", b"no-store"),
                (b"etag", b'"v1"'),
                (b"x-request-cost", b"3"),
                (b"content-language", b"en"),
                (b"set-cookie", b"session=secret"),
                (b"connection", b"keep-alive, x-hop"),
                (b"x-hop", b"one connection only"),
                (b"keep-alive", b"timeout=5"),
                (b"transfer-encoding", b"chunked"),
            ]
            app = IdempotencyMiddleware(inner, idem)
            first = (await call(app))[1]
            assert first["set-cookie"] == "session=secret"  # the first answer is untouched
            replayed = (await call(app))[1]
            assert replayed == {
                "content-type": "application/json",
                "location": "/orders/1",
                "cache-control": "no-store",
                "etag": '"v1"',
                "x-request-cost": "3",
                "content-language": "en",
                "idempotent-replayed": "true",
            }
            keep_cookies = IdempotencyMiddleware(inner, idem, drop_headers=())
            await call(keep_cookies, key="c")
            assert (await call(keep_cookies, key="c"))[1]["set-cookie"] == "session=secret"

    run(body())


def test_response_over_the_limit_is_delivered_once_and_not_replayed(tmp_path: Path) -> None:
    async def body() -> None:
        async with opened(tmp_path) as idem:
            inner = CountingApp()
            inner.body = b"x" * ((1 << 20) + 1)
            app = IdempotencyMiddleware(inner, idem)
            assert (await call(app))[2] == inner.body
            status, headers, raw = await call(app)
            assert status == 500 and headers["idempotent-replayed"] == "true"
            assert json.loads(raw)["type"] == DOCS + "#response-not-stored"
            assert inner.calls == 1
            small = IdempotencyMiddleware(
                inner, idem, max_response_body=4, store_server_errors=False
            )
            inner.body = b"12345"
            await call(small, key="s")
            assert (await call(small, key="s"))[0] == 500  # stored: the request did run
            assert inner.calls == 2

    run(body())


def test_pathsend_responses_are_stored(tmp_path: Path) -> None:
    """``http.response.pathsend`` (the server sends a file): the stored copy is the
    file's content, replayed as an ordinary body."""
    receipt = tmp_path / "receipt.pdf"
    receipt.write_bytes(b"%PDF receipt 1")

    async def file_app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        assert "http.response.pathsend" in scope["extensions"]
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/pdf")],
            }
        )
        await send({"type": "http.response.pathsend", "path": str(receipt)})

    async def body() -> None:
        async with opened(tmp_path) as idem:
            app = IdempotencyMiddleware(file_app, idem)
            extensions = {"http.response.pathsend": {}}
            first = await call(app, extensions=extensions)
            assert first[0] == 200 and first[2] == b""  # the server sends the file
            receipt.write_bytes(b"%PDF receipt 2")
            status, headers, raw = await call(app, extensions=extensions)
            assert (status, headers["content-type"], raw) == (
                200,
                "application/pdf",
                b"%PDF receipt 1",
            )

    run(body())


def test_cancelled_discarded_and_unfinished_runs(tmp_path: Path) -> None:
    """A request cancelled while the app runs is stored as a 500 (released when server
    errors are not stored); ``current_run().discard()`` in the app
    stores nothing; an app that returns without a whole response is stored as the 500
    the server sends; a ``zerocopysend`` body cannot be copied: ``response-not-stored``."""

    async def silent(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # returns without a response

    async def discarding(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        run = current_run()
        assert run is not None and run.key == "d"
        run.discard()  # e.g. it failed before any effect
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b"try again"})

    async def zerocopy(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.zerocopysend", "file": None})

    async def body() -> None:
        async with opened(tmp_path) as idem:
            # Cancelled while the app ran: its effects may have happened. Stored as the
            # 500 a server sends (store_server_errors, the default), never run again;
            # released only when server errors are not stored.
            for store, key, calls, expected in ((True, "c", 1, 500), (False, "c2", 2, 201)):
                inner = CountingApp()
                inner.gate = asyncio.Event()
                app = IdempotencyMiddleware(inner, idem, store_server_errors=store)
                first = asyncio.create_task(call(app, key=key))
                await inner.entered.wait()
                first.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await first
                inner.gate.set()
                status, headers, _ = await call(app, key=key)
                assert status == expected
                assert ("idempotent-replayed" in headers) is store
                assert inner.calls == calls

            for _ in range(2):
                status, headers, raw = await call(IdempotencyMiddleware(discarding, idem), key="d")
                assert (status, raw) == (503, b"try again") and "idempotent-replayed" not in headers
            released = await idem.get("d", client="user:alice")
            assert released is not None and released.result is None and released.owner is None

            assert (await call(IdempotencyMiddleware(silent, idem), key="s"))[0] is None
            status, headers, raw = await call(IdempotencyMiddleware(inner, idem), key="s")
            assert (status, headers["idempotent-replayed"], raw) == (
                500,
                "true",
                b"Internal Server Error",
            )

            await call(IdempotencyMiddleware(zerocopy, idem), key="z")
            status, _, raw = await call(IdempotencyMiddleware(inner, idem), key="z")
            assert status == 500 and json.loads(raw)["type"] == DOCS + "#response-not-stored"

    run(body())


def test_a_response_with_trailers_reaches_the_client_whole(tmp_path: Path) -> None:
    """The HTTP trailers extension: the body's last chunk is held until the outcome is
    stored, and the trailers after it are held too; both reach the client, in order
    (the trailers are not stored: a replay has the body only)."""
    trailers = {"type": "http.response.trailers", "headers": [(b"x-sum", b"ab")]}

    async def trailing_app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        start = {"type": "http.response.start", "status": 200, "trailers": True}
        await send({**start, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": b"b", "more_body": False})
        await send({**trailers, "more_trailers": False})

    async def body() -> None:
        async with opened(tmp_path) as idem:
            app = IdempotencyMiddleware(trailing_app, idem)
            sent: list[dict[str, Any]] = []

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b"{}", "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            scope = {
                "type": "http",
                "method": "POST",
                "path": "/orders",
                "query_string": b"",
                "headers": [(b"idempotency-key", b"k1"), (b"content-type", b"application/json")],
                "extensions": {"http.response.trailers": {}},
                "user": User("alice"),
            }
            await app(scope, receive, send)
            assert [m["type"].rsplit(".", 1)[1] for m in sent] == [
                "start",
                "body",
                "body",
                "trailers",
            ]
            assert b"".join(m.get("body", b"") for m in sent) == b"ab"
            assert sent[-1]["headers"] == [(b"x-sum", b"ab")]
            status, headers, raw = await call(app)
            assert (status, headers["idempotent-replayed"], raw) == (200, "true", b"ab")

    run(body())
