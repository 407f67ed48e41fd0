"""The idempotency middleware under the explorer: a client paying with Idempotency-Keys
through one or two server processes (which crash and restart), retrying after every
failure; uploads cut short, responses that cannot be delivered, concurrent duplicates,
a payload changed under the same key, tokens refreshed between retries.

The handler records each execution in a side table (not through the middleware).
Invariants: each key's payment executed at most once — unless a process died, or
stalled past its lease, while the handler ran, or its outcome could not be stored
after it ran (the window a handler that writes to another store than the keys' has;
the docs say so); every 2xx the client got for a key
carries that one execution's body (a replay is byte-identical); a request cut short
executes nothing; once the faults stop, a retry gets the stored outcome (the 2xx, or
the server error stored for a run that failed or was cancelled) or, for a key that
never ran, runs now.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from typing import Any, cast

from multistore.consistency import Idempotency, IdempotencyMiddleware
from multistore.errors import MultistoreError
from multistore.lab.explore import Actor, InvariantViolation, Simulation
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore

Message = MutableMapping[str, Any]


class ClientGone(OSError):
    """The client closed the connection: the server cannot send the response."""


#: The idempotency lease (the default policy's).
LEASE = 30.0


class Server:
    """One server process: the payment app behind the middleware."""

    def __init__(self, sim: Simulation, urls: dict[str, str], interrupted: set[str]) -> None:
        self.sim = sim
        self.urls = urls
        self.interrupted = interrupted
        """Keys whose handler ran when its process died, or stalled past the lease: the
        one window where a payment may run twice (its effect and the record are in two
        stores), see docs/consistency/idempotency.md."""
        self.in_handler: set[str] = set()
        self.actor: Actor | None = None
        self.middleware: IdempotencyMiddleware | None = None
        self.stop = asyncio.Event()

    async def main(self, actor: Actor) -> None:
        self.middleware = None
        self.in_handler = set()

        def died() -> None:
            self.interrupted.update(self.in_handler)

        def stalled(seconds: float) -> None:
            if seconds >= LEASE / 3:  # a heartbeat may be missed: the lease can run out
                self.interrupted.update(self.in_handler)

        actor.on_crash.append(died)
        actor.on_stall.append(stalled)
        while True:  # a supervisor starts the process again until its stores open
            try:
                kv = await open_store(self.urls["idem"], model="kv")
            except MultistoreError:
                await asyncio.sleep(1.0)
                continue
            try:
                effects = cast(
                    RelationalStore, await open_store(self.urls["bank"], model="relational")
                )
            except MultistoreError:
                await kv.close()
                await asyncio.sleep(1.0)
                continue
            break

        async def pay(scope: Message, receive: Any, send: Any) -> None:
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            amount = json.loads(body)["amount"]
            key = dict(scope["headers"])[b"idempotency-key"].decode()
            self.in_handler.add(key)
            scope["explore.effect"] = True  # from here on the payment may have happened
            try:
                execution = await effects.fetch_val(
                    "INSERT INTO executions (key, amount) VALUES (:k, :a) RETURNING id",
                    {"k": key, "a": amount},
                )
            finally:
                self.in_handler.discard(key)
            out = json.dumps({"paid": amount, "execution": execution}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 201,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": out})

        idem = Idempotency(kv, clock=actor.wall_clock)
        self.middleware = IdempotencyMiddleware(pay, idem, client=lambda scope: "alice")
        self.actor = actor
        try:
            await self.stop.wait()
        finally:
            self.middleware = None
            await effects.close()
            await kv.close()


class Attempt:
    """One HTTP request as the client sends it, with what goes wrong on its side."""

    def __init__(self, key: str, amount: int, *, truncate: bool, gone: bool) -> None:
        self.key = key
        self.body = json.dumps({"amount": amount}).encode()
        self.truncate = truncate
        self.cut = truncate
        self.gone = gone
        self._sent = False
        self.status: int | None = None
        self.response = b""

    def scope(self) -> Message:
        return {
            "type": "http",
            "method": "POST",
            "path": "/pay",
            "query_string": b"",
            "headers": [
                (b"idempotency-key", self.key.encode()),
                (b"content-type", b"application/json"),
            ],
        }

    async def receive(self) -> Message:
        if self.truncate:
            self.truncate = False
            return {"type": "http.request", "body": self.body[:3], "more_body": True}
        if not self._sent and not self.cut:
            self._sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.gone:
            raise ClientGone("connection closed by the client")
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
        elif message["type"] == "http.response.body":
            self.response += message.get("body", b"")


async def _send(servers: list[Server], attempt: Attempt, pick: int, interrupted: set[str]) -> None:
    """Deliver one attempt to a live server; a crash or error answers 5xx."""
    live = [s for s in servers if s.middleware is not None and s.actor is not None]
    if not live:
        attempt.status = 503  # nobody listens: connection refused
        return
    server = live[pick % len(live)]
    assert server.actor is not None and server.middleware is not None
    scope = attempt.scope()
    task = server.actor.start(server.middleware(scope, attempt.receive, attempt.send))
    await asyncio.wait({task})
    failed = task.cancelled() or task.exception() is not None
    if failed and scope.get("explore.effect"):
        # The payment ran, then the request ended in an error: its outcome may not be
        # stored, and the key is then taken over once its lease ends.
        interrupted.add(attempt.key)
    if failed and attempt.status is None:
        attempt.status = 599  # the connection broke before a response (a crash)


async def idempotency(sim: Simulation) -> None:
    urls = {
        "idem": f"sqlite:///{sim.directory / 'idem.db'}",
        "bank": f"sqlite:///{sim.directory / 'bank.db'}",
    }
    bank = cast(RelationalStore, await open_store(urls["bank"], model="relational"))
    await bank.execute(
        "CREATE TABLE executions (id INTEGER PRIMARY KEY, key TEXT NOT NULL, amount INT)"
    )
    interrupted: set[str] = set()
    servers = [Server(sim, urls, interrupted) for _ in range(sim.choices.randint(1, 2))]
    actors = [
        sim.spawn(f"server{i}", s.main, restart=s.main, cancellable=False)
        for i, s in enumerate(servers)
    ]
    keys = {f"k{n}": sim.choices.randint(1, 99) for n in range(sim.choices.randint(1, 3))}
    truncated_only: dict[str, bool] = dict.fromkeys(keys, True)
    ok_bodies: dict[str, set[bytes]] = {k: set() for k in keys}
    changed: set[str] = set()  # keys the client also sent with another payload

    async def client(actor: Actor) -> None:
        for key, amount in keys.items():
            for _ in range(sim.choices.randint(1, 4)):
                other = sim.choices.random() < 0.1
                if other:
                    changed.add(key)
                attempt = Attempt(
                    key,
                    amount + 1 if other else amount,
                    truncate=sim.choices.random() < 0.15,
                    gone=sim.choices.random() < 0.15,
                )
                if not attempt.truncate:
                    truncated_only[key] = False
                twin = None
                if sim.choices.random() < 0.2:  # a duplicate sent at the same time
                    twin = Attempt(key, amount, truncate=False, gone=False)
                    truncated_only[key] = False
                sends = [_send(servers, attempt, sim.choices.randrange(2), interrupted)]
                if twin is not None:
                    sends.append(_send(servers, twin, sim.choices.randrange(2), interrupted))
                await asyncio.gather(*sends)
                for one in (attempt, twin):
                    if one is None:
                        continue
                    sim.note(
                        f"{key} amount {json.loads(one.body)['amount']}"
                        f"{' cut short' if one.cut else ''}{' client gone' if one.gone else ''}"
                        f": {one.status}"
                    )
                    if one.status is not None and 200 <= one.status < 300:
                        ok_bodies[key].add(one.response)
                await asyncio.sleep(sim.choices.uniform(0, 5))

    actors.append(sim.spawn("client", client, crashable=False))
    await sim.join(actors[-1])
    sim.quiesce()
    executed = await _executions(bank)
    for key, only in truncated_only.items():
        if only and executed.get(key):
            raise InvariantViolation(f"{key}: only cut-short uploads were sent, yet it ran")
    # Fault-free retries: the executed payload gets its stored response; a key that
    # never ran runs now, unless a server error was stored for it (stored 5xx replay,
    # as Stripe does: the client needs a new key then).
    await _until_serving(servers)
    for key, amount in keys.items():
        ran = executed.get(key, [])
        pay = ran[0][1] if ran else amount
        attempt = Attempt(key, pay, truncate=False, gone=False)
        for _ in range(50):
            attempt = Attempt(key, pay, truncate=False, gone=False)
            await _send(servers, attempt, 0, interrupted)
            if attempt.status not in (409, 503, 599):
                break
            await asyncio.sleep(1.0)
        status = attempt.status or 0
        if status == 422 and key in changed:
            continue  # the key belongs to the other payload, which the server saw first
        if not (status == 201 or 500 <= status < 600):
            raise InvariantViolation(
                f"{key}: a fault-free retry got {status} {attempt.response[:200]!r}"
            )
        if status == 201:
            ok_bodies[key].add(attempt.response)
    executed = await _executions(bank)
    for key in keys:
        runs = executed.get(key, [])
        if len(runs) > 1 and key not in interrupted:
            raise InvariantViolation(f"{key}: executed {len(runs)} times: {runs}")
        if len(ok_bodies[key]) > 1 and key not in interrupted:
            raise InvariantViolation(f"{key}: different successful responses {ok_bodies[key]}")
        if ok_bodies[key] and not runs:
            raise InvariantViolation(f"{key}: a 2xx was answered but nothing ran")
    for server in servers:
        server.stop.set()
    await sim.join(*actors)
    await bank.close()


async def _executions(bank: RelationalStore) -> dict[str, list[tuple[int, int]]]:
    rows = await bank.fetch_all("SELECT id, key, amount FROM executions ORDER BY id")
    out: dict[str, list[tuple[int, int]]] = {}
    for row in rows:
        out.setdefault(row["key"], []).append((int(row["id"]), int(row["amount"])))
    return out


async def _until_serving(servers: list[Server]) -> None:
    for _ in range(1000):
        if any(s.middleware is not None for s in servers):
            return
        await asyncio.sleep(0.1)
    raise InvariantViolation("no server process is serving after the faults stopped")
