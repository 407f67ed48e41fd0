"""The ``Idempotency-Key`` middleware over real HTTP, on every idempotency backend: a
uvicorn server process (two workers) serving ``idem_http_app``, and httpx or a raw
socket as the client. The draft's scenarios and Stripe's: first request, replay,
409 while in flight, 422 for another payload, 400 for a missing, malformed or doubled
key and for an unidentified client, quoted and bare keys, 50 concurrent requests,
a client that disconnects mid-body or mid-handler, 4xx/5xx/raise with and without
storing, expiry, two principals, anonymous clients, 413.

Handler executions are counted from a side table the handler writes, never from the
middleware's state. One server per backend, shared by the module's tests; each test
uses keys of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.consistency.idem_http_app import SIDE_SCHEMA, side_db

ROOT = Path(__file__).resolve().parents[2]
DOCS = "https://multistore.readthedocs.io/en/latest/consistency/idempotency/"


def wait_until(check: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {within} s")
        time.sleep(0.02)


@dataclass
class Server:
    base: str
    side: sqlite3.Connection

    def executions(self, key: str) -> list[str]:
        """Bodies of the handler's executions for ``key`` (as the header carried it)."""
        rows = self.side.execute(
            "SELECT body FROM executions WHERE idem_key = ? ORDER BY id", (key,)
        ).fetchall()
        return [str(body) for (body,) in rows]

    def executions_like(self, needle: str) -> int:
        rows = self.side.execute(
            "SELECT count(*) FROM executions WHERE idem_key LIKE ?", (f"%{needle}%",)
        ).fetchone()
        return int(rows[0])

    def open_gate(self, name: str) -> None:
        self.side.execute("INSERT INTO gates (name) VALUES (?)", (name,))

    def post(
        self,
        path: str = "/orders",
        *,
        key: str | None,
        body: Any = None,
        user: str | None = "alice:t1",
        headers: list[tuple[str, str]] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        fields = list(headers or [])
        if key is not None:
            fields.append(("Idempotency-Key", key))
        if user is not None:
            fields.append(("Authorization", f"Bearer {user}"))
        with httpx.Client(base_url=self.base, timeout=60) as client:
            if content is not None:
                return client.post(path, content=content, headers=fields)
            return client.post(path, json=body if body is not None else {}, headers=fields)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _serve(url: str, model: str, tmp: Path) -> Iterator[Server]:
    side_path = tmp / "side.db"
    side = side_db(str(side_path))
    side.executescript(SIDE_SCHEMA)
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")]),
        "IDEM_URL": url,
        "IDEM_MODEL": model,
        "IDEM_SIDE": str(side_path),
    }
    log = (tmp / "uvicorn.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "tests.consistency.idem_http_app:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited: {(tmp / 'uvicorn.log').read_text()[-3000:]}")
        try:
            return httpx.get(base + "/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(up, "the uvicorn server answers", within=60)
        yield Server(base, side)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        side.close()


@pytest.fixture(
    scope="module",
    params=[
        "sqlite-kv",
        "sqlite-relational",
        pytest.param("redis-kv", marks=pytest.mark.server),
        pytest.param("postgresql-relational", marks=pytest.mark.server),
        pytest.param("mariadb-relational", marks=pytest.mark.server),
    ],
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    name = str(request.param)
    tmp = tmp_path_factory.mktemp(name)
    if name == "sqlite-kv":
        url, model = f"sqlite:///{tmp / 'idem.db'}", "kv"
    elif name == "sqlite-relational":
        url, model = f"sqlite:///{tmp / 'idem.db'}", "relational"
    elif name == "redis-kv":
        redis = request.getfixturevalue("redis_server")
        url, model = redis.url(4) + "?prefix=http-suite:", "kv"
    elif name == "postgresql-relational":
        url, model = request.getfixturevalue("postgres_server").create_database(), "relational"
    else:
        url, model = request.getfixturevalue("mariadb_server").create_database(), "relational"
    with _serve(url, model, tmp) as running:
        yield running


def new_key() -> str:
    return f"k-{uuid.uuid4().hex[:12]}"


def replayed(response: httpx.Response) -> bool:
    return response.headers.get("idempotent-replayed") == "true"


def problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["link"] == f'<{DOCS}>; rel="describedby"; type="text/html"'
    body: dict[str, Any] = response.json()
    assert body["type"] == f"{DOCS}#{slug}" and body["status"] == status
    return body


# -- the first request, the replay, the refusals -------------------------------------


def test_first_request_runs_once_and_is_replayed(server: Server) -> None:
    key = new_key()
    first = server.post(key=key, body={"sku": "A", "qty": 1})
    assert first.status_code == 201 and not replayed(first)
    again = server.post(key=key, body={"qty": 1, "sku": "A"})  # other member order
    assert again.status_code == 201 and replayed(again)
    assert again.content == first.content
    for header in ("content-type", "location", "cache-control", "x-execution"):
        assert again.headers[header] == first.headers[header]
    assert "set-cookie" in first.headers and "set-cookie" not in again.headers
    assert len(server.executions(key)) == 1


def test_another_payload_under_the_key_is_422(server: Server) -> None:
    key = new_key()
    assert server.post(key=key, body={"amount": 10}).status_code == 201
    problem(server.post(key=key, body={"amount": 99}), 422, "idempotency-key-reused")
    problem(
        server.post("/released/orders", key=key, body={"amount": 10}), 422, "idempotency-key-reused"
    )
    assert server.executions(key) == ['{"amount":10}']


def test_request_in_flight_is_409(server: Server) -> None:
    key, gate = new_key(), new_key()

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=server.base, timeout=60) as client:
            headers = {"Idempotency-Key": key, "Authorization": "Bearer alice:t1"}
            first = asyncio.create_task(
                client.post("/orders", json={"wait": gate}, headers=headers)
            )
            await asyncio.to_thread(wait_until, lambda: len(server.executions(key)) == 1, "started")
            busy = await client.post("/orders", json={"wait": gate}, headers=headers)
            problem(busy, 409, "idempotency-in-progress")
            assert 1 <= int(busy.headers["retry-after"]) <= 2
            server.open_gate(gate)
            assert (await first).status_code == 201
            done = await client.post("/orders", json={"wait": gate}, headers=headers)
            assert done.status_code == 201 and replayed(done)

    asyncio.run(scenario())
    assert len(server.executions(key)) == 1


def test_missing_malformed_and_doubled_keys_are_400(server: Server) -> None:
    problem(server.post(key=None), 400, "idempotency-key-missing")
    for bad in ['"unterminated', '"a" trailing', "two words", '"\\n"']:
        problem(server.post(key=bad), 400, "invalid-idempotency-key")
    key = new_key()
    doubled = server.post(key=None, headers=[("Idempotency-Key", key), ("Idempotency-Key", key)])
    problem(doubled, 400, "invalid-idempotency-key")
    assert server.executions(key) == []
    assert server.post(key=key).status_code == 201  # nothing was recorded for it


def test_quoted_and_bare_keys_are_one_key(server: Server) -> None:
    key = new_key()
    assert server.post(key=f'"{key}"').status_code == 201
    assert replayed(server.post(key=key))
    assert replayed(server.post(key=f'"{key}"; origin=1'))
    spaced = f'"{key} with spaces"'
    assert server.post(key=spaced).status_code == 201
    assert replayed(server.post(key=spaced))
    assert server.executions_like(key) == 2


def test_fifty_concurrent_requests_run_once(server: Server) -> None:
    key, gate = new_key(), new_key()

    async def scenario() -> list[int]:
        limits = httpx.Limits(max_connections=60)
        async with httpx.AsyncClient(base_url=server.base, timeout=60, limits=limits) as client:
            headers = {"Idempotency-Key": key, "Authorization": "Bearer alice:t1"}
            body = {"wait": gate, "sku": "A"}
            tasks = [
                asyncio.create_task(client.post("/orders", json=body, headers=headers))
                for _ in range(50)
            ]
            pending = set(tasks)
            statuses: list[int] = []
            # every request but the one running is refused while the gate is shut
            while len(statuses) < 49:
                done, pending = await asyncio.wait(
                    pending, timeout=60, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    raise TimeoutError("the refusals did not come within 60 s")
                statuses += [t.result().status_code for t in done]
            server.open_gate(gate)
            statuses += [r.status_code for r in await asyncio.gather(*pending)]
            after = await client.post("/orders", json=body, headers=headers)
            assert replayed(after)
            return statuses

    statuses = asyncio.run(scenario())
    assert sorted(statuses) == [201] + [409] * 49
    assert len(server.executions(key)) == 1


# -- clients that go away ----------------------------------------------------------------


def _raw_request(server: Server, key: str, body: bytes, declared: int) -> socket.socket:
    host, port = server.base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = (
        f"POST /orders HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\nIdempotency-Key: {key}\r\n"
        "Authorization: Bearer alice:t1\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def test_client_disconnect_mid_body_runs_nothing(server: Server) -> None:
    key = new_key()
    full = b'{"sku": "A", "note": "' + b"x" * 200 + b'"}'
    _raw_request(server, key, full[:50], len(full)).close()  # gone before the body ended
    response = server.post(key=key, content=full, headers=[("Content-Type", "application/json")])
    assert response.status_code == 201 and not replayed(response)
    assert server.executions(key) == [full.decode()]


def test_client_disconnect_mid_handler_keeps_the_outcome(server: Server) -> None:
    key, gate = new_key(), new_key()
    body = f'{{"wait": "{gate}"}}'.encode()
    sock = _raw_request(server, key, body, len(body))
    wait_until(lambda: len(server.executions(key)) == 1, "the handler started")
    sock.close()  # the client is gone while the handler runs
    server.open_gate(gate)
    answers: list[httpx.Response] = []

    def answered() -> bool:
        answers.append(
            server.post(key=key, content=body, headers=[("Content-Type", "application/json")])
        )
        return answers[-1].status_code != 409

    wait_until(answered, "the first request finished")
    assert answers[-1].status_code == 201 and replayed(answers[-1])
    assert len(server.executions(key)) == 1


# -- what is stored ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "reruns"),
    [
        ("", {"4xx": False, "5xx": False, "raise": False}),
        ("/released", {"4xx": False, "5xx": True, "raise": True}),
    ],
    ids=["stored", "released"],
)
def test_client_and_server_errors(server: Server, prefix: str, reruns: dict[str, bool]) -> None:
    cases = {"4xx": {"status": 409}, "5xx": {"status": 503}, "raise": {"raise": True}}
    for case, body in cases.items():
        key = new_key()
        first = server.post(prefix + "/orders", key=key, body=body)
        expected = {"4xx": 409, "5xx": 503, "raise": 500}[case]
        assert first.status_code == expected, (case, first.text)
        again = server.post(prefix + "/orders", key=key, body=body)
        assert again.status_code == expected
        assert replayed(again) is not reruns[case], case
        assert again.content == first.content or reruns[case]
        assert len(server.executions(key)) == (2 if reruns[case] else 1), case


def test_records_expire(server: Server) -> None:
    key = new_key()
    assert server.post("/short/orders", key=key).status_code == 201
    seen: list[httpx.Response] = []

    def ran_again() -> bool:
        seen.append(server.post("/short/orders", key=key))
        return not replayed(seen[-1])

    wait_until(ran_again, "the 1 s record expired")
    assert all(r.status_code == 201 for r in seen)
    assert len(server.executions(key)) == 2


def test_clients_are_independent_and_tokens_are_not_clients(server: Server) -> None:
    key = new_key()
    alice = server.post(key=key, body={"amount": 1}, user="alice:token-1")
    bob = server.post(key=key, body={"amount": 2}, user="bob:token-9")  # no 422 across clients
    assert alice.status_code == bob.status_code == 201
    assert not replayed(bob) and alice.json()["order"] == {"amount": 1}
    refreshed = server.post(key=key, body={"amount": 1}, user="alice:token-2")
    assert replayed(refreshed) and refreshed.content == alice.content
    assert len(server.executions(key)) == 2


def test_anonymous_clients_are_refused_unless_shared_on_purpose(server: Server) -> None:
    key = new_key()
    problem(server.post(key=key, user=None), 400, "idempotency-client-unknown")
    problem(server.post(key=key, user="not-a-bearer-pair"), 400, "idempotency-client-unknown")
    assert server.executions(key) == []
    shared = server.post("/public/orders", key=key, user=None)
    assert shared.status_code == 201
    assert replayed(server.post("/public/orders", key=key, user=None))
    assert len(server.executions(key)) == 1


def test_request_body_over_the_limit_is_413(server: Server) -> None:
    key = new_key()
    big = b'{"note": "' + b"x" * (1 << 20) + b'"}'
    response = server.post(key=key, content=big, headers=[("Content-Type", "application/json")])
    problem(response, 413, "content-too-large")
    assert server.executions(key) == []
    assert server.post(key=key).status_code == 201
