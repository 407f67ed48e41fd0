"""Orders under load while the server is SIGKILLed and restarted.

50 concurrent clients (10 users, 5 clients each) place orders on loopback. Each
order has its own ``Idempotency-Key``; a third of them are sent twice at once (a
duplicated key), every request has a short timeout and is retried with the same key
after a timeout, a refused connection (the server is down) or a 409 (the first
request still runs). In the middle of the run the server process is killed with
SIGKILL and started again on the same port and data.

Afterwards, read from the databases themselves:
- no order is charged twice, and no key made two orders;
- every order a client was told was accepted (201/202) exists, is confirmed, and
  its payment, reservation and stock movement are there;
- every answer a client got for a key after the first final answer is that same
  answer (the stored outcome replayed).
Counts are small and every wait is bounded, so the test runs in a few tens of seconds.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections import defaultdict
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.fix_service import ServiceProcess
from tests.service.test_api import product

USERS = 10
CLIENTS_PER_USER = 5
ORDERS_PER_CLIENT = 4
KILL_AFTER = 60  # final answers before the SIGKILL
DEADLINE = 240.0


@dataclass
class Outcomes:
    answers: dict[str, list[tuple[int, str]]] = field(default_factory=lambda: defaultdict(list))
    """key -> every final answer (status, body) a client got for it, in order."""
    retries: int = 0
    transport_errors: int = 0
    in_progress: int = 0
    server_errors: int = 0
    finals: int = 0
    killed: asyncio.Event = field(default_factory=asyncio.Event)


FINAL = {201, 202, 409, 422}


async def place(
    client: httpx.AsyncClient, token: str, key: str, body: dict[str, Any], out: Outcomes
) -> None:
    """Send until a final answer (the same key every time)."""
    deadline = time.monotonic() + DEADLINE
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": f'"{key}"'}
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError(f"order {key}: no final answer within {DEADLINE} s")
        try:
            response = await client.post("/orders", json=body, headers=headers, timeout=3.0)
        except httpx.TransportError:  # timed out, refused, reset: the server may be down
            out.transport_errors += 1
            out.retries += 1
            await asyncio.sleep(0.2)
            continue
        problem_type = ""
        if response.headers.get("content-type", "").startswith("application/problem+json"):
            problem_type = response.json()["type"]
        if response.status_code == 409 and problem_type.endswith("idempotency-in-progress"):
            out.in_progress += 1
            out.retries += 1
            await asyncio.sleep(0.2)
            continue
        if response.status_code >= 500:
            out.server_errors += 1
            out.retries += 1
            await asyncio.sleep(0.2)
            continue
        assert response.status_code in FINAL, response.text
        out.answers[key].append((response.status_code, response.text))
        out.finals += 1
        return


async def client_run(
    base: str, token: str, skus: list[str], out: Outcomes, seed: int
) -> list[tuple[str, dict[str, Any]]]:
    placed = []
    async with httpx.AsyncClient(base_url=base) as client:
        for n in range(ORDERS_PER_CLIENT):
            key = f"load-{seed}-{n}-{uuid.uuid4().hex[:8]}"
            body = {"items": [{"sku": skus[(seed + n) % len(skus)], "qty": 1 + (seed + n) % 3}]}
            if (seed + n) % 3 == 0:  # a duplicate sent at the same time
                await asyncio.gather(
                    place(client, token, key, body, out), place(client, token, key, body, out)
                )
            else:
                await place(client, token, key, body, out)
            # And a retry later, as a client that lost the first answer would send.
            await place(client, token, key, body, out)
            placed.append((key, body))
    return placed


async def killer(server: ServiceProcess, out: Outcomes) -> None:
    deadline = time.monotonic() + DEADLINE
    while out.finals < KILL_AFTER:
        if time.monotonic() > deadline:
            raise TimeoutError("the load never reached the kill point")
        await asyncio.sleep(0.01)
    await asyncio.to_thread(server.kill)
    out.killed.set()
    await asyncio.to_thread(server.start)


async def workload(
    server: ServiceProcess, tokens: list[str], skus: list[str]
) -> tuple[Outcomes, list[tuple[str, dict[str, Any]]]]:
    out = Outcomes()
    runs = [
        client_run(server.base, tokens[c % USERS], skus, out, seed=c)
        for c in range(USERS * CLIENTS_PER_USER)
    ]
    kill = asyncio.create_task(killer(server, out))
    placed = await asyncio.gather(*runs)
    await kill
    return out, [p for ps in placed for p in ps]


def query(path: Path, sql: str, *params: Any) -> list[sqlite3.Row]:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(sql, params).fetchall()


def test_orders_survive_sigkill_under_load(tmp_path: Path) -> None:
    server = ServiceProcess(
        tmp_path,
        "--rate-limit", "1000000",
        "--idempotency-lease", "1",
        "--saga-lease", "1",
    )  # fmt: skip
    server.start()
    try:
        with server.admin() as admin:
            skus = [product(admin, stock=100_000, price="2.00") for _ in range(3)]
        tokens = [server.new_user("load").token or "" for _ in range(USERS)]
        started = time.monotonic()
        out, placed = asyncio.run(workload(server, tokens, skus))
        elapsed = time.monotonic() - started
        assert out.killed.is_set()
        # Wait (bounded) until no saga is left unfinished after the restart.
        deadline = time.monotonic() + 60
        while query(
            server.folder / ".multistore" / "sagas.db",
            "SELECT 1 FROM multistore_sagas WHERE state IN ('pending', 'running', 'compensating')",
        ):
            if time.monotonic() > deadline:
                raise TimeoutError("sagas still unfinished 60 s after the load")
            time.sleep(0.1)
    finally:
        server.stop()

    data = server.folder / ".multistore"
    orders = {r["id"]: dict(r) for r in query(data / "orders.db", "SELECT * FROM shop_orders")}
    charges = query(data / "shop-payments.db", "SELECT order_id, amount_cents, status FROM "
                    "shop_payments")  # fmt: skip
    reservations = query(data / "shop-inventory.db", "SELECT * FROM shop_reservations")
    stock = {r["sku"]: r["stock"] for r in query(data / "shop-inventory.db",
                                                   "SELECT * FROM shop_stock")}  # fmt: skip

    # No order charged twice; no key made two orders.
    per_order = defaultdict(int)
    for charge in charges:
        per_order[charge["order_id"]] += 1
    assert max(per_order.values()) == 1
    assert len(orders) == len(placed)

    accepted = 0
    for key, body in placed:
        answers = out.answers[key]
        assert answers, key
        first_status, first_body = answers[0]
        # Every later answer for the key is the stored one.
        assert all(a == answers[0] for a in answers), (key, answers)
        assert first_status in (201, 202), (key, answers[0])
        order_id = json.loads(first_body)["id"]
        accepted += 1
        order = orders[order_id]
        assert order["status"] == "confirmed", order  # nothing accepted was lost
        item = body["items"][0]
        assert order["total_cents"] == 200 * item["qty"]
        assert [c["status"] for c in charges if c["order_id"] == order_id] == ["charged"]
        assert [(r["sku"], r["qty"]) for r in reservations if r["order_id"] == order_id] == [
            (item["sku"], item["qty"])
        ]
    taken: dict[str, int] = defaultdict(int)
    for _key, body in placed:
        taken[body["items"][0]["sku"]] += body["items"][0]["qty"]
    assert {sku: 100_000 - stock[sku] for sku in skus} == dict(taken)
    print(
        f"\nload: {len(placed)} orders by {USERS * CLIENTS_PER_USER} clients in {elapsed:.1f} s, "
        f"server SIGKILLed after {KILL_AFTER} answers; {accepted} accepted, "
        f"{out.retries} retries ({out.transport_errors} transport errors, {out.in_progress} "
        f"in progress, {out.server_errors} 5xx), "
        f"{sum(len(a) for a in out.answers.values()) - len(placed)} replayed answers"
    )
