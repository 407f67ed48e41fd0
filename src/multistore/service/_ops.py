"""What an operator looks at: one place computes it for the console, the Prometheus
gauges and ``multistore status``, so the three always show the same numbers.

Everything here reads through the public APIs of the stores, the saga engine, the
two-phase-commit coordinator, the outbox and the replication packages.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Any, Final

from multistore.config import Config
from multistore.consistency import (
    DecisionLog,
    Outbox,
    SagaLog,
    TransactionCoordinator,
    list_sagas,
    open_participant,
)
from multistore.core import SagaState
from multistore.errors import MultistoreError
from multistore.replication import QuorumWideColumnStore, Router, quorum_status, replication_status
from multistore.service._carts import Carts
from multistore.service._instruments import NO_INSTRUMENTS
from multistore.service._shop import OUTBOX_TABLE, Shop, cart_node_urls, database_urls
from multistore.stores import Store, open_store
from multistore.stores.document import DocumentStore
from multistore.stores.graph import GraphStore
from multistore.stores.kv import KeyValueStore
from multistore.stores.relational import RelationalStore
from multistore.stores.search import SearchStore
from multistore.stores.timeseries import TimeSeriesStore
from multistore.stores.widecolumn import WideColumnStore

__all__ = [
    "COUNT_LIMIT",
    "in_doubt",
    "note_idempotency_key",
    "numbers",
    "operations_report",
    "outbox_report",
    "probe",
    "recent_idempotency_keys",
    "replication_report",
    "role_health",
    "saga_counts",
    "shop_numbers",
]

COUNT_LIMIT: Final = 10_000
"""Sagas are counted up to this many per state (the console shows "10000+")."""
RECENT_KEYS: Final = "shop:idempotency-keys"
RECENT_KEEP: Final = 500


async def probe(store: Store) -> None:
    """One cheap read on ``store`` (raises what the store raises)."""
    if isinstance(store, KeyValueStore):
        await store.get("shop:health")
    elif isinstance(store, DocumentStore):
        await store.collections()
    elif isinstance(store, SearchStore):
        await store.indexes()
    elif isinstance(store, RelationalStore):
        await store.fetch_val("SELECT 1")
    elif isinstance(store, GraphStore):
        await store.count_nodes()
    elif isinstance(store, TimeSeriesStore):
        await store.measurements()
    elif isinstance(store, WideColumnStore):
        await store.tables()


async def role_health(shop: Shop, *, within: float = 5.0) -> list[dict[str, Any]]:
    """Every role's store: its backend, URL (password hidden) and whether a read works."""
    stores: dict[str, Store] = {
        "sessions": shop.sessions,
        "profiles": shop.profiles,
        "catalog": shop.search,
        "orders": shop.dbs["orders"],
        "social": shop.graph,
        "metrics": shop.metrics,
        "readings": shop.readings_store,
        "idempotency": shop.idempotency.store,
        "sagas": shop.saga_log,
        "payments": shop.dbs["payments"],
        "inventory": shop.dbs["inventory"],
    }
    rows = []
    for role, store in stores.items():
        start = time.perf_counter()
        try:
            await asyncio.wait_for(probe(store), within)
            ok, detail = True, ""
        except (MultistoreError, TimeoutError) as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        rows.append(
            {
                "role": role,
                "model": store.model,
                "backend": store.backend,
                "url": store.url.render(),
                "ok": ok,
                "ms": round((time.perf_counter() - start) * 1000, 2),
                "detail": detail,
            }
        )
    return rows


async def saga_counts(log: RelationalStore) -> dict[str, int]:
    """Sagas per state (each counted up to :data:`COUNT_LIMIT`)."""
    return {
        state.value: len(await list_sagas(log, state=state, limit=COUNT_LIMIT))
        for state in SagaState
    }


async def in_doubt(coordinator: TransactionCoordinator) -> list[dict[str, Any]]:
    """Every prepared branch not yet resolved, with what the decision log says."""
    found = []
    for name, participant in coordinator.participants.items():
        for xid in await participant.in_doubt():
            decision = await coordinator.log.decision(xid)
            found.append(
                {
                    "participant": name,
                    "branch": str(xid),
                    "transaction": str(xid.gtrid) if hasattr(xid, "gtrid") else str(xid),
                    "node": xid.node,
                    "decision": "commit" if decision is not None else "none (presumed abort)",
                }
            )
    return found


async def outbox_report(shop: Shop, *, limit: int = 50) -> dict[str, Any]:
    counts = await shop.outbox.counts()
    oldest = await shop.outbox.events(state="pending", limit=1)
    lag = max(0.0, time.time() - oldest[0].event.created_at) if oldest else 0.0
    relay = getattr(shop, "relay", None)
    return {
        "counts": counts,
        "lag_seconds": round(lag, 3),
        "parked": await shop.outbox.parked(limit=limit),
        "relay": None if relay is None else relay.statistics(),
    }


async def note_idempotency_key(shop: Shop, client: str, key: str) -> None:
    """Remember that ``client`` used ``key`` (the console lists recent keys)."""
    await shop.sessions.zadd(RECENT_KEYS, {f"{client}\x1f{key}": time.time()})
    if random.random() < 1 / 50:  # trim now and then, not on every request
        beyond = await shop.sessions.zrange(RECENT_KEYS, RECENT_KEEP, -1, desc=True)
        if beyond:
            await shop.sessions.zrem(RECENT_KEYS, *(member for member, _ in beyond))


async def recent_idempotency_keys(shop: Shop, *, limit: int = 100) -> list[dict[str, Any]]:
    """The most recent keys with their state (in_progress, completed; expired ones
    are left out), newest first."""
    rows = []
    for member, _ in await shop.sessions.zrange(RECENT_KEYS, 0, limit - 1, desc=True):
        client, _, key = member.partition("\x1f")
        record = await shop.idempotency.get(key, client=client)
        if record is None:
            continue
        result = record.result or {}
        value = result.get("value")
        rows.append(
            {
                "client": client,
                "key": key,
                "state": record.state,
                "created_at": record.created_at,
                "expires_at": record.expires_at,
                "lease_until": record.lease_until if record.state == "in_progress" else None,
                "status": value.get("status") if isinstance(value, dict) else None,
            }
        )
    return rows


async def replication_report(shop: Shop) -> dict[str, Any]:
    """The carts' multi-master nodes, and the router and quorum cluster named in
    ``[replication]`` (each opened, asked and closed, as ``multistore status`` does)."""
    report: dict[str, Any] = {"carts": await shop.carts.status()}
    spec = shop.config.replication
    if spec is not None and spec.router_primary is not None:
        try:
            router = await Router.open(
                spec.router_primary.render(hide_password=False),
                [u.render(hide_password=False) for u in spec.router_replicas],
            )
            try:
                report["router"] = {"ok": True, **await replication_status(router)}
            finally:
                await router.close()
        except MultistoreError as exc:
            report["router"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    if spec is not None and spec.quorum is not None:
        try:
            store = await QuorumWideColumnStore.open(spec.quorum)
            try:
                report["quorum"] = {"ok": True, **await quorum_status(store.cluster)}
            finally:
                await store.close()
        except MultistoreError as exc:
            report["quorum"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return report


async def numbers(
    saga_log: RelationalStore, coordinator: TransactionCoordinator, outbox: Outbox, carts: Carts
) -> dict[str, Any]:
    """The gauges: sagas by state, in-doubt branches, outbox counts and lag, cart
    replication lag."""
    counts = await outbox.counts()
    oldest = await outbox.events(state="pending", limit=1)
    status = await carts.status()
    return {
        "sagas": await saga_counts(saga_log),
        "in_doubt": len(await in_doubt(coordinator)),
        "outbox": counts,
        "outbox_lag_seconds": max(0.0, time.time() - oldest[0].event.created_at) if oldest else 0.0,
        "replication_behind": {node: dict(entry["behind"]) for node, entry in status.items()},
    }


async def shop_numbers(shop: Shop) -> dict[str, Any]:
    assert shop.coordinator is not None
    return await numbers(shop.saga_log, shop.coordinator, shop.outbox, shop.carts)


async def operations_report(config: Config) -> dict[str, Any]:
    """:func:`numbers` read from ``config``'s stores without a running server (for
    ``multistore status``). Only the stores the numbers come from are opened (the
    saga log, the shop's databases with the 2PC log, the cart nodes) and read; no
    in-doubt transaction is resolved and no saga resumed."""
    async with contextlib.AsyncExitStack() as stack:
        saga_log = await config.open("sagas")
        stack.push_async_callback(saga_log.close)
        assert isinstance(saga_log, RelationalStore)
        await SagaLog(saga_log).setup()
        urls = database_urls(config)
        # The participants and the log only: no node lease taken, nothing recovered.
        participants = {}
        for name, url in urls.items():
            participants[name] = await open_participant(name, url)
            stack.push_async_callback(participants[name].close)
        decisions = await DecisionLog.open(config.role("transactions").url)
        stack.push_async_callback(decisions.close)
        coordinator = TransactionCoordinator(
            participants, decisions, node="status", recover_interval=None
        )
        inventory = await open_store(urls["inventory"], model="relational")
        stack.push_async_callback(inventory.close)
        assert isinstance(inventory, RelationalStore)
        outbox = Outbox(inventory, table=OUTBOX_TABLE)
        await outbox.setup()
        carts = await Carts.open(cart_node_urls(config), instruments=NO_INSTRUMENTS)
        stack.push_async_callback(carts.close)
        return await numbers(saga_log, coordinator, outbox, carts)
    raise AssertionError("unreachable")  # pragma: no cover
