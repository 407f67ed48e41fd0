"""Embedded replication: a SQLite primary and SQLite replicas fed by log shipping.

Every write through the router appends its statements to ``multistore_changelog``
*in the same transaction* (statement-based, as MySQL's statement format): the entry
number is the log position and the causal token of the write. A :class:`LogShipper`
task per replica reads new entries from the primary and applies them in order, each
primary transaction in one replica transaction, together with a copy of the entries,
so a replica's position is the last entry it holds and a promoted replica continues
the same numbering. ``delay`` holds every entry back that many seconds after it
committed, so lag is visible and measurable on one machine.

Timelines: every node keeps ``multistore_timeline`` (timeline, parent, fork). A
promotion adds the row of a new timeline whose parent ended at the promoted replica's
last entry (``fork``), and logs that row as an entry of kind ``timeline``, so the
replicas that follow the new primary learn it in log order. Entries the old primary
wrote past the fork are not in the new history: their positions name other writes now.

Limits: only writes made through the router are shipped; statements must be
deterministic (no ``random()``, ``CURRENT_TIMESTAMP`` in a write); the log is not
truncated.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar

from multistore.errors import (
    ConflictError,
    InvalidValueError,
    MultistoreError,
    NotFoundError,
    StoreError,
    StoreUnavailableError,
    UsageError,
)
from multistore.replication._config import LogShipping
from multistore.replication._nodes import Backend, Node, ReplayState, Role, RoutedTransaction
from multistore.replication._timeline import Timeline
from multistore.stores.relational import Queries, RelationalStore, Row

__all__ = ["LogShipper", "SQLiteBackend"]

CHANGELOG_DDL = (
    "CREATE TABLE IF NOT EXISTS multistore_changelog ("
    " position INTEGER PRIMARY KEY AUTOINCREMENT,"
    " kind TEXT NOT NULL,"
    " sql TEXT NOT NULL,"
    " params TEXT,"
    " committed_at REAL NOT NULL)"
)
_APPEND = (
    "INSERT INTO multistore_changelog (kind, sql, params, committed_at)"
    " VALUES (:kind, :sql, :params, :at) RETURNING position"
)
_COPY = (
    "INSERT INTO multistore_changelog (position, kind, sql, params, committed_at)"
    " VALUES (:position, :kind, :sql, :params, :committed_at)"
)
_LAST = "SELECT coalesce(max(position), 0) FROM multistore_changelog"
# The fence of a replaced primary: a row here, and every later append to its log (so
# every write through any router, in any process) aborts in the writer's transaction.
FENCE_DDL = "CREATE TABLE IF NOT EXISTS multistore_fence (fenced_at REAL NOT NULL)"
FENCED = (
    "this node was fenced by a failover: it is no longer the primary and takes no writes;"
    " open the router on the promoted node"
)
FENCE_TRIGGER = (
    "CREATE TRIGGER IF NOT EXISTS multistore_fenced BEFORE INSERT ON multistore_changelog"
    f" WHEN EXISTS (SELECT 1 FROM multistore_fence) BEGIN SELECT RAISE(ABORT, '{FENCED}'); END"
)
# A fence row is never deleted; and a routed write appends to the log only while the
# file has no fence row and still has this trigger, so a write through a router cannot
# lift the fence (``DELETE FROM multistore_fence``, ``DROP TRIGGER``) for itself or
# for later writes: its append fails and its transaction rolls back whole.
FENCE_KEPT = (
    "CREATE TRIGGER IF NOT EXISTS multistore_fence_kept BEFORE DELETE ON multistore_fence"
    f" BEGIN SELECT RAISE(ABORT, '{FENCED}'); END"
)
_ROUTED_APPEND = (
    "INSERT INTO multistore_changelog (kind, sql, params, committed_at)"
    " SELECT :kind, :sql, :params, :at"
    " WHERE NOT EXISTS (SELECT 1 FROM multistore_fence) AND EXISTS (SELECT 1 FROM"
    " sqlite_master WHERE type = 'trigger' AND name = 'multistore_fence_kept')"
    " RETURNING position"
)
TIMELINE_DDL = (
    "CREATE TABLE IF NOT EXISTS multistore_timeline ("
    " timeline INTEGER PRIMARY KEY,"
    " parent INTEGER,"
    " fork INTEGER NOT NULL)"
)
_FIRST_TIMELINE = "INSERT OR IGNORE INTO multistore_timeline VALUES (1, NULL, 0)"
_CURRENT_TIMELINE = "SELECT coalesce(max(timeline), 1) FROM multistore_timeline"
_NEW_TIMELINE = (
    "INSERT INTO multistore_timeline (timeline, parent, fork) VALUES (:timeline, :parent, :fork)"
)


def _encode_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat(" ")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    raise InvalidValueError(
        f"cannot ship a parameter of type {type(value).__name__} in the change log"
    )


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"$bytes"}:
        return base64.b64decode(value["$bytes"])
    return value


def encode_params(params: Any) -> str | None:
    if params is None:
        return None
    if isinstance(params, list):
        return json.dumps([{k: _encode_value(v) for k, v in p.items()} for p in params])
    return json.dumps({k: _encode_value(v) for k, v in dict(params).items()})


def decode_params(text: str | None) -> Any:
    if text is None:
        return None
    data = json.loads(text)
    if isinstance(data, list):
        return [{k: _decode_value(v) for k, v in p.items()} for p in data]
    return {k: _decode_value(v) for k, v in data.items()}


@dataclass
class _Replica:
    name: str
    store: RelationalStore
    delay: float
    applied: int = 0
    timeline: int = 1
    error: str | None = None
    running: asyncio.Event = field(default_factory=asyncio.Event)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None


class LogShipper:
    """Applies the primary's change log to each replica, asynchronously.

    ``await pause(name)`` / ``resume(name)`` stop and restart one replica's apply (a
    paused replica falls behind), ``set_delay(name, seconds)`` changes its delay, and
    ``position(name)`` is the last entry it applied.
    """

    def __init__(self, source: RelationalStore, shipping: LogShipping) -> None:
        self.source = source
        self.shipping = shipping
        self._replicas: dict[str, _Replica] = {}

    async def add(self, name: str, store: RelationalStore) -> None:
        replica = _Replica(name, store, self.shipping.delay)
        replica.applied = int(await store.fetch_val(_LAST))
        replica.timeline = int(await store.fetch_val(_CURRENT_TIMELINE))
        replica.running.set()
        replica.task = asyncio.create_task(self._run(replica), name=f"logship-{name}")
        self._replicas[name] = replica

    async def remove(self, name: str) -> None:
        """Stop shipping to ``name`` (it is being promoted)."""
        replica = self._get(name)
        del self._replicas[name]
        # Cancel rather than wait for the lock: an apply may be waiting for the primary,
        # which may be down or held by the very transaction a failover interrupts. An
        # apply is one replica transaction, so a cancelled one leaves nothing behind.
        if replica.task is not None:
            replica.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replica.task

    def notify(self) -> None:
        """A write committed on the primary: look for it now."""
        for replica in self._replicas.values():
            replica.wake.set()

    async def pause(self, name: str) -> None:
        replica = self._get(name)
        async with replica.lock:
            replica.running.clear()

    def resume(self, name: str) -> None:
        replica = self._get(name)
        replica.running.set()
        replica.wake.set()

    def set_delay(self, name: str, seconds: float) -> None:
        if seconds < 0:
            raise InvalidValueError("a shipping delay must be >= 0")
        replica = self._get(name)
        replica.delay = seconds
        replica.wake.set()

    def position(self, name: str) -> int:
        replica = self._get(name)
        if replica.error is not None:
            raise StoreError(f"replica {name} stopped applying the change log: {replica.error}")
        return replica.applied

    def timeline(self, name: str) -> int:
        """The timeline of the last entry ``name`` applied."""
        return self._get(name).timeline

    async def close(self) -> None:
        for name in list(self._replicas):
            await self.remove(name)

    def _get(self, name: str) -> _Replica:
        try:
            return self._replicas[name]
        except KeyError:
            raise NotFoundError(f"no log-shipping replica named {name!r}") from None

    async def _run(self, replica: _Replica) -> None:
        while True:
            await replica.running.wait()
            replica.wake.clear()
            due_in: float | None = None
            async with replica.lock:
                if replica.running.is_set():
                    try:
                        due_in = await self._ship_once(replica)
                    except MultistoreError:
                        # The primary may be down: keep trying; an apply error stops it.
                        if replica.error is not None:
                            return
            timeout = self.shipping.interval if due_in is None else min(due_in, 1.0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(timeout, 0.001)):
                    await replica.wake.wait()

    async def _ship_once(self, replica: _Replica) -> float | None:
        """Apply what is due; seconds until the next entry falls due (None: nothing)."""
        entries = await self.source.fetch_all(
            "SELECT position, kind, sql, params, committed_at FROM multistore_changelog"
            " WHERE position > :p ORDER BY position",
            {"p": replica.applied},
        )
        cutoff = time.time() - replica.delay
        due: list[Row] = []
        due_in: float | None = None
        for entry in entries:
            if entry["committed_at"] > cutoff:
                due_in = float(entry["committed_at"]) - cutoff
                break
            due.append(entry)
        if due:
            try:
                await self._apply(replica.store, due)
            except MultistoreError as exc:
                replica.error = f"entry {due[0]['position']}..{due[-1]['position']}: {exc}"
                raise
            replica.applied = int(due[-1]["position"])
            for entry in due:
                if entry["kind"] == "timeline":
                    replica.timeline = int(decode_params(entry["params"])["timeline"])
        return due_in

    @staticmethod
    async def _apply(store: RelationalStore, entries: list[Row]) -> None:
        async with store.transaction() as tx:
            for entry in entries:
                await _replay(tx, entry)
            await tx.executemany(_COPY, [dict(entry) for entry in entries])


async def _replay(tx: Queries, entry: Row) -> None:
    params = decode_params(entry["params"])
    if entry["kind"] == "executemany":
        await tx.executemany(entry["sql"], params)
    elif entry["kind"] == "script":
        await tx.execute_script(entry["sql"])
    else:
        await tx.execute(entry["sql"], params)


class SQLiteBackend(Backend):
    """SQLite nodes; replicas fed by a :class:`LogShipper`."""

    scheme: ClassVar[str] = "sqlite"
    fence_may_time_out_unreached: ClassVar[bool] = False

    def __init__(self, shipper: LogShipper) -> None:
        self.shipper = shipper

    async def prepare(self, node: Node) -> None:
        await node.store.execute(CHANGELOG_DDL)
        await node.store.execute(TIMELINE_DDL)
        await node.store.execute(FENCE_DDL)
        await node.store.execute(FENCE_TRIGGER)
        await node.store.execute(FENCE_KEPT)
        await node.store.execute(_FIRST_TIMELINE)
        if node.role is Role.REPLICA:
            await self.shipper.add(node.name, node.store)

    async def log(self, scope: RoutedTransaction, kind: str, sql: str, params: Any) -> None:
        position = await scope.inner.fetch_val(
            _ROUTED_APPEND,
            {"kind": kind, "sql": sql, "params": encode_params(params), "at": scope.started},
        )
        if position is None:  # the write itself tried to lift the fence
            raise ConflictError(FENCED)
        scope.note_position(int(position))

    @asynccontextmanager
    async def write_scope(
        self, store: RelationalStore, *, transaction: bool
    ) -> AsyncIterator[RoutedTransaction]:
        async with store.transaction() as tx:
            scope = RoutedTransaction(tx, self)
            yield scope
            if scope.position is None:
                scope.position = int(await tx.fetch_val(_LAST))
            # Before the commit: nothing past ``position`` can commit while we hold
            # the write lock, so every commit made before this time is at or below it.
            scope.observed_at = time.monotonic()
        self.shipper.notify()

    async def primary_position(self, node: Node) -> int:
        return int(await node.store.fetch_val(_LAST))

    async def timeline(self, node: Node) -> Timeline:
        rows = await node.store.fetch_all(
            "SELECT timeline, parent, fork FROM multistore_timeline ORDER BY timeline"
        )
        current = max((int(r["timeline"]) for r in rows), default=1)
        ends = {int(r["parent"]): int(r["fork"]) for r in rows if r["parent"] is not None}
        return Timeline(current, ends)

    async def replay_state(self, node: Node) -> ReplayState:
        if node.role is Role.REPLICA:
            position = self.shipper.position(node.name)
            return ReplayState(position, position, timeline=self.shipper.timeline(node.name))
        position = await self.primary_position(node)
        timeline = int(await node.store.fetch_val(_CURRENT_TIMELINE))
        return ReplayState(position, position, timeline=timeline)

    async def promote(self, node: Node) -> None:
        """Stop feeding ``node``, then start a new timeline on it that forks off at its
        last entry, logged so that the replicas following it learn it in order.

        The node may not have heard yet of the timeline its source (the primary it
        followed) is on, when an earlier failover's entries had not reached it: those
        timelines are copied from the source first, so the new one is newer than every
        timeline the cluster used and forks off the current one (a replica that applied
        entries past a fork was refused by :meth:`repoint` and is not promoted)."""
        with contextlib.suppress(NotFoundError):
            await self.shipper.remove(node.name)
        known: list[Row] = []
        with contextlib.suppress(MultistoreError):  # the source may be gone: what we have
            known = await self.shipper.source.fetch_all(
                "SELECT timeline, parent, fork FROM multistore_timeline"
            )
        async with node.store.transaction() as tx:
            for row in known:
                await tx.execute(
                    "INSERT OR IGNORE INTO multistore_timeline (timeline, parent, fork) "
                    "VALUES (:timeline, :parent, :fork)",
                    dict(row),
                )
            parent = int(await tx.fetch_val(_CURRENT_TIMELINE))
            params = {"timeline": parent + 1, "parent": parent, "fork": await tx.fetch_val(_LAST)}
            await tx.execute(_NEW_TIMELINE, params)
            await tx.fetch_val(
                _APPEND,
                {
                    "kind": "timeline",
                    "sql": _NEW_TIMELINE,
                    "params": encode_params(params),
                    "at": time.time(),
                },
            )

    async def repoint(self, node: Node, primary: Node) -> None:
        """Feed ``node`` from ``primary``; refused when it applied entries past the
        fork of the new timeline (they are not in the new primary's history)."""
        self.shipper.source = primary.store
        fork = await primary.store.fetch_val(
            "SELECT fork FROM multistore_timeline WHERE timeline = (" + _CURRENT_TIMELINE + ")"
        )
        applied = self.shipper.position(node.name)
        if fork is not None and applied > int(fork):
            await self.shipper.remove(node.name)
            raise StoreError(
                f"{node.name} applied entries up to {applied}, past the fork at {fork}: it "
                f"diverged from {primary.name}; rebuild it from a copy of {primary.name}"
            )

    async def fence(self, node: Node) -> int | None:
        """Fence the file: from this commit on, every write through a router (this one or
        another process's) fails on it. Its last entry, which no later write can pass.

        When the caller's own task holds the file's connection (a failover asked for from
        inside a transaction on the old primary), the fence cannot be taken before that
        transaction ends: it stays pending, as for an unreachable primary, and the
        router's monitor takes it later (the router refuses the old primary meanwhile)."""
        try:
            return await self._fence(node)
        except UsageError as exc:
            raise StoreUnavailableError(f"cannot fence {node.name} now: {exc}") from exc

    @staticmethod
    async def _fence(node: Node) -> int:
        async with node.store.transaction() as tx:
            await tx.execute(FENCE_DDL)
            await tx.execute(FENCE_TRIGGER)
            await tx.execute(FENCE_KEPT)
            await tx.execute(
                "INSERT INTO multistore_fence (fenced_at) VALUES (:at)", {"at": time.time()}
            )
            # Read under the write lock the insert took: every write that committed
            # before is at or below it, and none can commit after.
            return int(await tx.fetch_val(_LAST))

    async def close(self) -> None:
        await self.shipper.close()
