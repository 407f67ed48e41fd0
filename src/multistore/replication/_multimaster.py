"""A multi-master node: a relational store that accepts writes and applies its peers' changes.

Every node accepts writes locally. A local write stamps the version with the
node's :class:`~multistore.core.HybridClock`, gives it the key's causal context
(a version vector) and the next sequence number of this origin, and commits the
new state, the change-log row and nothing else in **one** local transaction. The
clock is restored when the node opens from the greatest timestamp in the log
(and the clock's reading after the last batch it received, kept in ``mm_meta``),
so it never goes backwards across restarts.

A remote change is applied once: ``(origin, seq)`` already in the log (or
already refused) makes a re-delivery a no-op. Its timestamp goes through the
clock's skew guard first; a change from a clock too far ahead is recorded in
``mm_rejected`` and not applied. Then the configured resolver decides what the
key holds:

* plain strategies (:class:`~multistore.core.LWW`,
  :class:`~multistore.core.MergeFunction`, :class:`~multistore.core.KeepSiblings`)
  keep the key's *causal* state as a :class:`~multistore.core.SiblingSet` (the
  join of every version received, which converges in any delivery order) and
  present it through the resolver: the LWW winner, the merged value, or the
  newest ``limit`` siblings. A local write is based on everything the node has
  seen, so it supersedes the siblings it read.
* :class:`~multistore.core.CRDTResolver`: the key holds a CRDT state; local
  mutations ship their **delta**, and the resolver joins it in. Nothing is lost.

Every concurrent meeting is recorded in ``mm_conflicts`` with the versions that
lost, for :meth:`MultiMasterNode.conflicts`.

One :class:`MultiMasterNode` object owns its store: two processes must not run
the same node.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from multistore.core import (
    CRDT,
    ClockSkewError,
    CRDTResolver,
    HLCTimestamp,
    HybridClock,
    Resolution,
    Resolver,
    SiblingSet,
    SkewPolicy,
    Versioned,
    VersionVector,
    crdt_from_dict,
)
from multistore.errors import ConflictError, InvalidValueError, UsageError
from multistore.replication._changelog import (
    SCHEMA,
    Change,
    ConflictRecord,
    RejectedChange,
    dumps,
    loads,
)
from multistore.stores._registry import open_store
from multistore.stores.relational import RelationalStore, Transaction

__all__ = ["KeyRead", "MultiMasterNode", "NodeStatistics", "PeerPosition"]

C = TypeVar("C", bound=CRDT)


def wall_clock_ms() -> int:
    """The real wall clock in milliseconds (the default ``now_ms`` of a node)."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class PeerPosition:
    """Replication bookkeeping for one peer, as seen by this node."""

    pulled: int
    """This node applied the peer's log up to here (contiguously): pulls resume after it."""
    acked: int
    """The peer acknowledged this node's log up to here: pushes resume after it."""


@dataclass(frozen=True, slots=True)
class NodeStatistics:
    """What one node did since it was opened."""

    local_writes: int
    applied: int
    """Remote changes applied (each ``(origin, seq)`` once)."""
    duplicates: int
    """Re-delivered changes skipped."""
    rejected: int
    """Changes the skew guard refused."""
    conflicts: int


@dataclass(frozen=True, slots=True)
class KeyRead:
    """What :meth:`MultiMasterNode.read_with_context` returns."""

    values: tuple[Any, ...]
    """The current value, or the concurrent siblings; empty when the key is absent."""
    context: VersionVector
    """Every version the read saw: pass it to ``put(..., context=...)``."""


@dataclass
class _Counters:
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    conflicts: int = 0


class MultiMasterNode:
    """One multi-master node on a relational store; see the module docstring.

    Open with :meth:`open`; write with :meth:`put` (plain values) or
    :meth:`update` (CRDT mutations under :class:`~multistore.core.CRDTResolver`);
    read with :meth:`get`, :meth:`values` or :meth:`read`.
    """

    def __init__(
        self, store: RelationalStore, node_id: str, resolver: Resolver, clock: HybridClock
    ) -> None:
        self._store = store
        self.node_id = node_id
        self.resolver = resolver
        self.clock = clock
        self._crdt = isinstance(resolver, CRDTResolver)
        self._lock = asyncio.Lock()
        self._pos = 0
        self._seq = 0
        self._conflict_id = 0
        self._peers: dict[str, PeerPosition] = {}
        self._writes = 0
        self._counters = _Counters()

    @classmethod
    async def open(
        cls,
        url: str,
        node_id: str,
        *,
        resolver: Resolver,
        now_ms: Callable[[], int] = wall_clock_ms,
        max_skew_ms: int = 60_000,
        skew_policy: SkewPolicy | str = SkewPolicy.REJECT,
    ) -> MultiMasterNode:
        """Open (creating its tables if needed) the node ``node_id`` on the relational store
        ``url``; restore its clock, sequence numbers and peer positions from the store."""
        if not isinstance(resolver, Resolver):
            raise InvalidValueError(f"resolver must be a Resolver strategy, got {resolver!r}")
        clock = HybridClock(node_id, now_ms=now_ms, max_skew_ms=max_skew_ms, policy=skew_policy)
        store = await open_store(url, model="relational")
        if not isinstance(store, RelationalStore):
            await store.close()
            raise UsageError(f"a multi-master node needs a relational store, got {url!r}")
        node = cls(store, node_id, resolver, clock)
        try:
            await node._load()
        except BaseException:
            await store.close()
            raise
        return node

    async def _load(self) -> None:
        store = self._store
        await store.execute_script(SCHEMA)
        async with store.transaction() as tx:
            owner = await tx.fetch_val("SELECT value FROM mm_meta WHERE name = 'node_id'")
            if owner is None:
                await tx.execute(
                    "INSERT INTO mm_meta (name, value) VALUES ('node_id', :id)",
                    {"id": self.node_id},
                )
            elif owner != self.node_id:
                raise ConflictError(
                    f"store {store.url} holds multi-master node {owner!r}, not {self.node_id!r}"
                )
        self._pos = int(await store.fetch_val("SELECT COALESCE(MAX(pos), 0) FROM mm_log"))
        self._seq = int(
            await store.fetch_val(
                "SELECT COALESCE(MAX(seq), 0) FROM mm_log WHERE origin = :me", {"me": self.node_id}
            )
        )
        self._conflict_id = int(
            await store.fetch_val("SELECT COALESCE(MAX(id), 0) FROM mm_conflicts")
        )
        last = await store.fetch_one(
            "SELECT hlc_ms, hlc_counter FROM mm_log ORDER BY hlc_ms DESC, hlc_counter DESC LIMIT 1"
        )
        if last is not None:
            self.clock.restore(HLCTimestamp(int(last[0]), int(last[1]), self.node_id))
        received = await store.fetch_val("SELECT value FROM mm_meta WHERE name = 'clock'")
        if received is not None:
            self.clock.restore(HLCTimestamp.parse(received))
        for row in await store.fetch_all("SELECT peer, pulled, acked FROM mm_peers"):
            self._peers[row[0]] = PeerPosition(int(row[1]), int(row[2]))

    async def close(self) -> None:
        await self._store.close()

    async def __aenter__(self) -> MultiMasterNode:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def store(self) -> RelationalStore:
        return self._store

    @property
    def head(self) -> int:
        """The position of the last change in this node's log (0 when empty)."""
        return self._pos

    def position(self, peer: str) -> PeerPosition:
        return self._peers.get(peer, PeerPosition(0, 0))

    def statistics(self) -> NodeStatistics:
        c = self._counters
        return NodeStatistics(self._writes, c.applied, c.duplicates, c.rejected, c.conflicts)

    def __repr__(self) -> str:
        return f"<MultiMasterNode {self.node_id!r} on {self._store.backend}, {self.resolver!r}>"

    # -- local writes ---------------------------------------------------------------

    async def put(self, key: str, value: Any, *, context: VersionVector | None = None) -> Change:
        """Write ``value`` (JSON) to ``key``.

        ``context`` is what the value was based on — the ``context`` of a
        :meth:`read_with_context` — and the write supersedes exactly the versions it
        covers; versions that arrived after the read stay (as siblings, merged, or
        losing by timestamp, as the strategy says). Without it the write is a blind
        overwrite of every version this node has seen.
        """
        if self._crdt:
            raise UsageError("this node's values are CRDTs: change them with update()")
        _check_key(key)
        if context is not None and not isinstance(context, VersionVector):
            raise InvalidValueError(f"context must be a VersionVector, got {context!r}")
        dumps(value)
        async with self._lock:
            async with self._store.transaction() as tx:
                before = await self._siblings(tx, key)
                written = before.write(
                    value,
                    node=self.node_id,
                    hlc=self.clock.now(),
                    context=before.context if context is None else context,
                )
                change = Change(self.node_id, self._seq + 1, key, written.version)
                await self._save(tx, key, written.siblings.to_dict())
                await self._append(tx, change, self._pos + 1)
            self._seq, self._pos, self._writes = self._seq + 1, self._pos + 1, self._writes + 1
        return change

    async def update(
        self, key: str, mutate: Callable[[C], CRDT], factory: Callable[[str], C]
    ) -> Change:
        """Mutate the CRDT at ``key`` (made with ``factory(node_id)`` when absent).

        ``mutate`` changes the state in place and returns the delta, as every CRDT
        mutator does (``lambda cart: cart.add("apple", 2)``); the delta is what
        travels to the other nodes.
        """
        if not self._crdt:
            raise UsageError("update() needs a CRDTResolver node; use put() for plain values")
        _check_key(key)
        async with self._lock:
            async with self._store.transaction() as tx:
                current = await self._crdt_version(tx, key)
                state: Any = current.value.copy() if current is not None else factory(self.node_id)
                delta = mutate(state)
                if not isinstance(delta, CRDT):
                    raise InvalidValueError(
                        f"mutate must return the CRDT delta (the mutator's result), got {delta!r}"
                    )
                hlc = self.clock.now()
                vv = (current.vv if current is not None else VersionVector()).increment(
                    self.node_id
                )
                stored = Versioned(state.to_dict(), hlc, vv, self.node_id)
                change = Change(
                    self.node_id,
                    self._seq + 1,
                    key,
                    Versioned(delta.to_dict(), hlc, vv, self.node_id),
                )
                await self._save(tx, key, stored.to_dict())
                await self._append(tx, change, self._pos + 1)
            self._seq, self._pos, self._writes = self._seq + 1, self._pos + 1, self._writes + 1
        return change

    # -- reading --------------------------------------------------------------------

    async def read(self, key: str) -> Resolution[Any] | None:
        """The resolver's view of ``key`` (winner, merged value or siblings), or None."""
        _check_key(key)
        text = await self._store.fetch_val("SELECT state FROM mm_data WHERE key = :k", {"k": key})
        if text is None:
            return None
        if self._crdt:
            return Resolution(self._decode_crdt(loads(text)))
        return self._present(SiblingSet.from_dict(loads(text)))

    async def read_with_context(self, key: str) -> KeyRead:
        """The current value(s) of ``key`` and the causal context to pass to :meth:`put`
        when writing a value computed from them (read-modify-write without lost updates)."""
        _check_key(key)
        text = await self._store.fetch_val("SELECT state FROM mm_data WHERE key = :k", {"k": key})
        if text is None:
            return KeyRead((), VersionVector())
        if self._crdt:
            version = self._decode_crdt(loads(text))
            return KeyRead((_plain(version.value),), version.vv)
        siblings = SiblingSet.from_dict(loads(text))
        values = tuple(_plain(v) for v in self._present(siblings).values)
        return KeyRead(values, siblings.context)

    async def values(self, key: str) -> tuple[Any, ...]:
        """The current value(s) of ``key``: one, or several concurrent siblings; () if absent."""
        resolution = await self.read(key)
        if resolution is None:
            return ()
        return tuple(_plain(value) for value in resolution.values)

    async def get(self, key: str, default: Any = None) -> Any:
        """The one current value of ``key`` (a CRDT's plain value); :class:`UsageError` when
        siblings are kept (read them with :meth:`values`)."""
        values = await self.values(key)
        if not values:
            return default
        if len(values) > 1:
            raise UsageError(f"key {key!r} has {len(values)} siblings; read them with values()")
        return values[0]

    async def snapshot(self) -> dict[str, tuple[Any, ...]]:
        """Every key's current value(s), as :meth:`values` gives them."""
        rows = await self._store.fetch_all("SELECT key FROM mm_data ORDER BY key")
        return {row[0]: await self.values(row[0]) for row in rows}

    async def export(self) -> dict[str, Any]:
        """Every key's stored state (causal metadata included), for convergence checks."""
        rows = await self._store.fetch_all("SELECT key, state FROM mm_data ORDER BY key")
        return {row[0]: loads(row[1]) for row in rows}

    async def changes_after(self, pos: int, limit: int = 500) -> tuple[list[Change], int]:
        """Up to ``limit`` changes of this node's log after ``pos``, and the position reached."""
        rows = await self._store.fetch_all(
            "SELECT pos, body FROM mm_log WHERE pos > :pos ORDER BY pos LIMIT :n",
            {"pos": pos, "n": limit},
        )
        changes = [Change.from_dict(loads(row[1])) for row in rows]
        return changes, (int(rows[-1][0]) if rows else pos)

    async def conflicts(self, key: str | None = None) -> list[ConflictRecord]:
        """Recorded conflicts, oldest first (of ``key`` only, if given)."""
        sql = "SELECT id, key, kind, origin, seq, body FROM mm_conflicts"
        params: dict[str, Any] = {}
        if key is not None:
            sql += " WHERE key = :k"
            params["k"] = key
        records = []
        for row in await self._store.fetch_all(sql + " ORDER BY id", params):
            body = loads(row[5])
            losers = tuple(Versioned.from_dict(item) for item in body["losers"])
            records.append(
                ConflictRecord(
                    int(row[0]), row[1], row[2], row[3], int(row[4]), losers, tuple(body["values"])
                )
            )
        return records

    async def conflict_count(self) -> int:
        return int(await self._store.fetch_val("SELECT COUNT(*) FROM mm_conflicts"))

    async def rejected(self) -> list[RejectedChange]:
        """Changes the skew guard refused, by origin and sequence number."""
        rows = await self._store.fetch_all(
            "SELECT body, skew_ms FROM mm_rejected ORDER BY origin, seq"
        )
        return [RejectedChange(Change.from_dict(loads(row[0])), int(row[1])) for row in rows]

    async def rejected_count(self) -> int:
        return int(await self._store.fetch_val("SELECT COUNT(*) FROM mm_rejected"))

    # -- receiving ------------------------------------------------------------------

    async def apply_batch(self, peer: str, after: int, upto: int, changes: Sequence[Change]) -> int:
        """Apply ``changes`` (the peer's log from after ``after`` up to ``upto``).

        Returns this node's contiguous position in the peer's log: it advances to
        ``upto`` only when the batch starts at or before the current position, so a
        batch that arrives early (out of order, or after a lost one) is applied but
        the position waits for the gap to be filled.
        """
        async with self._lock:
            known = self.position(peer)
            counters = _Counters()
            pos = self._pos
            conflict_id = self._conflict_id
            async with self._store.transaction() as tx:
                for change in changes:
                    pos, conflict_id = await self._receive(tx, change, pos, conflict_id, counters)
                pulled = max(known.pulled, upto) if after <= known.pulled else known.pulled
                if pulled != known.pulled:
                    await self._save_peer(tx, peer, PeerPosition(pulled, known.acked))
                if counters.applied and self.clock.last is not None:
                    # receive events move the clock past the changes' own stamps: keep it
                    await tx.execute(
                        "INSERT INTO mm_meta (name, value) VALUES ('clock', :ts) "
                        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                        {"ts": str(self.clock.last)},
                    )
            self._pos, self._conflict_id = pos, conflict_id
            self._peers[peer] = PeerPosition(pulled, known.acked)
            total = self._counters
            total.applied += counters.applied
            total.duplicates += counters.duplicates
            total.rejected += counters.rejected
            total.conflicts += counters.conflicts
        return pulled

    async def record_ack(self, peer: str, pos: int) -> None:
        """The peer has applied this node's log up to ``pos``: pushes resume after it."""
        async with self._lock:
            known = self.position(peer)
            if pos <= known.acked:
                return
            position = PeerPosition(known.pulled, min(pos, self._pos))
            async with self._store.transaction() as tx:
                await self._save_peer(tx, peer, position)
            self._peers[peer] = position

    async def _receive(
        self, tx: Transaction, change: Change, pos: int, conflict_id: int, counters: _Counters
    ) -> tuple[int, int]:
        ident = {"o": change.origin, "s": change.seq}
        seen = change.origin == self.node_id or (
            await tx.fetch_val("SELECT 1 FROM mm_log WHERE origin = :o AND seq = :s", ident)
            is not None
            or await tx.fetch_val("SELECT 1 FROM mm_rejected WHERE origin = :o AND seq = :s", ident)
            is not None
        )
        if seen:
            counters.duplicates += 1
            return pos, conflict_id
        try:
            self.clock.observe(change.hlc)
        except ClockSkewError as exc:
            counters.rejected += 1
            await tx.execute(
                "INSERT INTO mm_rejected (origin, seq, key, skew_ms, body) "
                "VALUES (:o, :s, :k, :skew, :body)",
                {**ident, "k": change.key, "skew": exc.skew_ms, "body": dumps(change.to_dict())},
            )
            return pos, conflict_id
        if self._crdt:
            conflict = await self._apply_crdt(tx, change)
        else:
            conflict = await self._apply_plain(tx, change)
        pos += 1
        await self._append(tx, change, pos)
        counters.applied += 1
        if conflict is not None:
            conflict_id += 1
            counters.conflicts += 1
            kind, body = conflict
            await tx.execute(
                "INSERT INTO mm_conflicts (id, key, kind, origin, seq, body) "
                "VALUES (:id, :k, :kind, :o, :s, :body)",
                {**ident, "id": conflict_id, "k": change.key, "kind": kind, "body": dumps(body)},
            )
        return pos, conflict_id

    async def _apply_plain(self, tx: Transaction, change: Change) -> tuple[str, Any] | None:
        before = await self._siblings(tx, change.key)
        remote = change.version
        if before.context.contains(remote.dot):
            return None  # this version, or one that superseded it, is already here
        after = before.add(remote)
        await self._save(tx, change.key, after.to_dict())
        if len(before) == 0 or len(after) < 2 or remote.dot not in {v.dot for v in after}:
            return None  # nothing concurrent met: the remote simply superseded the local
        resolution = self.resolver.resolve(before, remote)
        values = self._present(after).values
        kind = "lost" if resolution.losers else "siblings" if len(values) > 1 else "merged"
        return kind, {
            "losers": [loser.to_dict() for loser in resolution.losers],
            "values": list(values),
        }

    async def _apply_crdt(self, tx: Transaction, change: Change) -> tuple[str, Any] | None:
        local = await self._crdt_version(tx, change.key)
        remote = self._decode_crdt(change.version.to_dict())
        if local is None:
            await self._save(tx, change.key, _encode_crdt(remote))
            return None
        resolution = self.resolver.resolve(local, remote)
        winner = resolution.winner
        assert winner is not None
        if remote.dot == local.dot:  # same dot: the candidates were deduplicated; join anyway
            winner = Versioned(local.value.merge(remote.value), local.hlc, local.vv, local.origin)
        await self._save(tx, change.key, _encode_crdt(winner))
        if not resolution.concurrent:
            return None
        return "merged", {"losers": [], "values": [_plain(winner.value)]}

    # -- storage helpers --------------------------------------------------------------

    def _present(self, siblings: SiblingSet[Any]) -> Resolution[Any]:
        newest = siblings.newest
        assert newest is not None
        return self.resolver.resolve(siblings, newest)

    def _decode_crdt(self, data: Any) -> Versioned[Any]:
        version = Versioned.from_dict(data)
        value = crdt_from_dict(version.value, node=self.node_id)
        return Versioned(value, version.hlc, version.vv, version.origin)

    async def _siblings(self, tx: Transaction, key: str) -> SiblingSet[Any]:
        text = await tx.fetch_val("SELECT state FROM mm_data WHERE key = :k", {"k": key})
        if text is None:
            return SiblingSet()
        return SiblingSet.from_dict(loads(text))

    async def _crdt_version(self, tx: Transaction, key: str) -> Versioned[Any] | None:
        text = await tx.fetch_val("SELECT state FROM mm_data WHERE key = :k", {"k": key})
        return None if text is None else self._decode_crdt(loads(text))

    async def _save(self, tx: Transaction, key: str, state: Any) -> None:
        await tx.execute(
            "INSERT INTO mm_data (key, state) VALUES (:k, :state) "
            "ON CONFLICT (key) DO UPDATE SET state = excluded.state",
            {"k": key, "state": dumps(state)},
        )

    async def _append(self, tx: Transaction, change: Change, pos: int) -> None:
        await tx.execute(
            "INSERT INTO mm_log (pos, origin, seq, key, hlc_ms, hlc_counter, body) "
            "VALUES (:pos, :o, :s, :k, :ms, :counter, :body)",
            {
                "pos": pos,
                "o": change.origin,
                "s": change.seq,
                "k": change.key,
                "ms": change.hlc.physical_ms,
                "counter": change.hlc.counter,
                "body": dumps(change.to_dict()),
            },
        )

    async def _save_peer(self, tx: Transaction, peer: str, position: PeerPosition) -> None:
        await tx.execute(
            "INSERT INTO mm_peers (peer, pulled, acked) VALUES (:p, :pulled, :acked) "
            "ON CONFLICT (peer) DO UPDATE SET pulled = excluded.pulled, acked = excluded.acked",
            {"p": peer, "pulled": position.pulled, "acked": position.acked},
        )


def _check_key(key: object) -> None:
    if not isinstance(key, str) or not key:
        raise InvalidValueError(f"a key must be a non-empty string, got {key!r}")


def _encode_crdt(version: Versioned[Any]) -> dict[str, Any]:
    return Versioned(version.value.to_dict(), version.hlc, version.vv, version.origin).to_dict()


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, CRDT) else value
