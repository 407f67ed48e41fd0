"""A multi-master node: a relational store that accepts writes and applies its peers' changes.

**Local writes.** :meth:`~MultiMasterNode.put`, :meth:`~MultiMasterNode.delete`
and :meth:`~MultiMasterNode.put_many` (plain values) and
:meth:`~MultiMasterNode.update` (CRDT mutations) stamp the version with the
node's :class:`~multistore.core.HybridClock`, give it its causal history and the
next sequence number of this origin, and commit the new state, the change-log
row and nothing else in **one** local transaction.

A plain write is based on a *context* — what the writer had read
(:meth:`~MultiMasterNode.read_with_context`), or, for a blind write, everything
the node has seen — and gets a dotted version vector: a fresh dot plus exactly
that context. It supersedes the versions the context covers and nothing else:
two read-modify-writes based on the same read stay concurrent siblings, even on
one node. A delete is such a write of a tombstone
(:data:`~multistore.core.DELETED`), so a write it did not see survives it.

**Receiving.** Each origin numbers its changes without gaps and a node takes an
origin's changes strictly in that order: a change it already has is skipped, one
that arrives ahead of a missing one is skipped too (it comes again). Every taken
change goes to the log, so the node relays it (unless every registered peer has
it already). A *stub* — a change that a later change of its origin to the same
key supersedes, sent without its value — is taken and not applied. Then:

* its timestamp goes through the clock's skew guard; a change stamped too far
  ahead is **held back** (``mm_pending``, :meth:`~MultiMasterNode.rejected`),
  with any later change to the same key from the same origin behind it, and
  retried by :meth:`~MultiMasterNode.retry_pending` until the clock allows it;
* plain strategies keep each key's *causal* state as a
  :class:`~multistore.core.SiblingSet` — the versions no other version
  superseded, plus what has been seen — which is the same on every node that
  took the same changes, in whatever order. Reads present it through the
  resolver: the LWW winner, the merged value, or the siblings;
* :class:`~multistore.core.CRDTResolver` nodes hold a CRDT state per key; local
  mutations ship their delta and receivers join it in;
* a change that cannot be applied (a CRDT of another type, an undecodable body)
  is **set aside** with a conflict record: the key keeps its state and the
  stream goes on.

Every concurrent meeting is recorded in ``mm_conflicts`` with the versions that
lost, and so is a merge function that raised (its siblings are then shown as
they are), for :meth:`~MultiMasterNode.conflicts`.

**Peers and the log.** A node remembers what each peer said it has (a version
vector of origin sequence numbers, :meth:`~MultiMasterNode.record_peer`) and
deletes log rows every registered peer has. :mod:`._replicator` moves the
changes.

**Cancellation.** A change's transaction and the node object's note of it (its
sequence number, log head, received vector and cached states) are one unit: a
cancellation while the transaction is built rolls it back; one that lands while it
commits waits for the commit, lets the node take note, and is raised then. A commit
that fails without saying whether it happened has the node read its state back from
the store.

One :class:`MultiMasterNode` object owns its store: two processes must not run
the same node.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from multistore.core import (
    CRDT,
    DELETED,
    ClockSkewError,
    HLCTimestamp,
    HybridClock,
    Resolution,
    Resolver,
    SiblingSet,
    SkewPolicy,
    Versioned,
    VersionVector,
)
from multistore.errors import ConflictError, InvalidValueError, MultistoreError, UsageError
from multistore.replication._changelog import (
    SCHEMA,
    Change,
    ConflictRecord,
    RejectedChange,
    coalesce,
    decode_vv,
    dumps,
    is_stub,
    loads,
)
from multistore.replication._mm_apply import (
    Applier,
    Counters,
    Opaque,
    decode_item,
    encode_crdt,
    plain,
)
from multistore.replication._mm_work import StateCache, Work
from multistore.stores._registry import open_store
from multistore.stores.relational import RelationalStore, Transaction

__all__ = ["KeyRead", "MultiMasterNode", "NodeStatistics"]

C = TypeVar("C", bound=CRDT)


def wall_clock_ms() -> int:
    """The real wall clock in milliseconds (the default ``now_ms`` of a node)."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class NodeStatistics:
    """What one node did since it was opened."""

    local_writes: int
    applied: int
    """Remote changes applied (each ``(origin, seq)`` once)."""
    duplicates: int
    """Changes received again and skipped."""
    rejected: int
    """Times the skew guard held a change back (a retry that fails again counts again)."""
    conflicts: int
    set_aside: int = 0
    """Changes that could not be applied (recorded as conflicts)."""
    deferred: int = 0
    """Changes that arrived ahead of a missing one of the same origin (skipped, sent again)."""
    superseded: int = 0
    """Changes received as stubs: a later change of the same origin to the key covered them."""


@dataclass(frozen=True, slots=True)
class KeyRead:
    """What :meth:`MultiMasterNode.read_with_context` returns."""

    values: tuple[Any, ...]
    """The current value, or the concurrent siblings; empty when the key is absent or deleted."""
    context: VersionVector
    """Every version the read saw: pass it to ``put(..., context=...)`` or ``delete``."""
    deleted: bool = False
    """True when a delete is among the current versions (alone, or beside live siblings)."""


class MultiMasterNode:
    """One multi-master node on a relational store; see the module docstring.

    Open with :meth:`open`; write with :meth:`put`, :meth:`delete`,
    :meth:`put_many` (plain values) or :meth:`update` (CRDT mutations under
    :class:`~multistore.core.CRDTResolver`); read with :meth:`get`,
    :meth:`values`, :meth:`read` or :meth:`read_with_context`.
    """

    def __init__(
        self, store: RelationalStore, node_id: str, resolver: Resolver, clock: HybridClock
    ) -> None:
        self._store = store
        self.node_id = node_id
        self.resolver = resolver
        self.clock = clock
        self._applier = Applier(node_id, resolver, clock)
        self._crdt = self._applier.crdt
        self._lock = asyncio.Lock()
        self._pos = 0
        self._seq = 0
        self._received: dict[str, int] = {}
        self._peer_has: dict[str, VersionVector] = {}
        self._trimmed: dict[str, int] = {}
        self._pending: dict[tuple[str, str], int] = {}
        self._conflict_id = 0
        self._writes = 0
        self._counters = Counters()
        self._cache = StateCache(_CACHED_KEYS)
        self._stale = False
        """A commit failed without saying whether it happened: read the state back."""

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
        ``url``; restore its clock, sequence numbers and peers from the store."""
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
        await self._read_state()

    async def _read_state(self) -> None:
        """Take the node's sequence numbers, log head, peers, held-back changes and clock
        from the store (at open, and after a commit that may or may not have happened)."""
        store = self._store
        self._received, self._peer_has, self._pending = {}, {}, {}
        self._cache = StateCache(_CACHED_KEYS)
        meta = {row[0]: row[1] for row in await store.fetch_all("SELECT name, value FROM mm_meta")}
        self._pos = max(
            int(await store.fetch_val("SELECT COALESCE(MAX(pos), 0) FROM mm_log")),
            int(meta.get("pos", 0)),
        )
        for row in await store.fetch_all("SELECT origin, MAX(seq) FROM mm_log GROUP BY origin"):
            self._received[row[0]] = int(row[1])
        for row in await store.fetch_all("SELECT origin, received FROM mm_origins"):
            self._received[row[0]] = max(self._received.get(row[0], 0), int(row[1]))
        self._seq = self._received.pop(self.node_id, 0)
        self._conflict_id = int(
            await store.fetch_val("SELECT COALESCE(MAX(id), 0) FROM mm_conflicts")
        )
        own = await store.fetch_one(
            "SELECT hlc_ms, hlc_counter FROM mm_log WHERE origin = :me "
            "ORDER BY hlc_ms DESC, hlc_counter DESC LIMIT 1",
            {"me": self.node_id},
        )
        if own is not None:
            self.clock.restore(HLCTimestamp(int(own[0]), int(own[1]), self.node_id))
        if "clock" in meta:
            self.clock.restore(HLCTimestamp.parse(meta["clock"]))
        for row in await store.fetch_all("SELECT peer, has FROM mm_peer_has"):
            self._peer_has[row[0]] = decode_vv(loads(row[1]))
        for row in await store.fetch_all("SELECT origin, key FROM mm_pending"):
            ident = (row[0], row[1])
            self._pending[ident] = self._pending.get(ident, 0) + 1
        self._stale = False

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        """Hold the node's lock, with its state read back first if a commit left it unsure."""
        async with self._lock:
            if self._stale:
                await self._read_state()
            yield

    @contextlib.asynccontextmanager
    async def _transaction(
        self,
    ) -> AsyncIterator[tuple[Transaction, Callable[[Callable[[], None]], None]]]:
        """A transaction of the node's store, and ``on_commit(fn)``: ``fn`` (the node's
        in-memory note of what the transaction changed) runs right after the commit.

        The commit and those notes are one unit a cancellation cannot split: a
        cancellation while the block runs rolls the transaction back (nothing
        happened, nothing is noted); one that lands once the block is done waits for
        the commit and the notes and is raised afterwards. Were the commit interrupted
        between the store and the notes, the node would number its next change with
        a sequence number already used and never offer the committed one to a peer.
        A commit that fails without saying whether it happened (an indeterminate
        error) has the node read its state back from the store. Hold the lock.
        """
        scope = self._store.transaction()
        tx = await scope.__aenter__()
        notes: list[Callable[[], None]] = []
        try:
            yield tx, notes.append
        except BaseException as exc:
            await scope.__aexit__(type(exc), exc, exc.__traceback__)  # rolls back
            raise
        commit = asyncio.ensure_future(self._commit(scope, notes))
        try:
            await _outlast(commit)
        except MultistoreError as exc:
            if not exc.definite:
                with contextlib.suppress(MultistoreError):  # else: at the next change
                    await self._read_state()
            raise

    async def _commit(
        self,
        scope: contextlib.AbstractAsyncContextManager[Transaction],
        notes: list[Callable[[], None]],
    ) -> None:
        try:
            await scope.__aexit__(None, None, None)
        except MultistoreError as exc:
            self._stale = not exc.definite  # it may have committed
            raise
        except BaseException:
            self._stale = True
            raise
        for note in notes:
            note()

    async def close(self) -> None:
        await self._store.close()

    async def __aenter__(self) -> MultiMasterNode:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- bookkeeping ------------------------------------------------------------------

    @property
    def store(self) -> RelationalStore:
        return self._store

    @property
    def head(self) -> int:
        """The position of the last change appended to this node's log (0 when none)."""
        return self._pos

    @property
    def seq(self) -> int:
        """How many changes this node has made (its own origin's last sequence number)."""
        return self._seq

    @property
    def received(self) -> VersionVector:
        """What this node has taken, per origin (itself included): peers need not send it."""
        return VersionVector({**self._received, self.node_id: self._seq})

    def received_from(self, origin: str) -> int:
        """How far this node has taken ``origin``'s changes."""
        return self._seq if origin == self.node_id else self._received.get(origin, 0)

    @property
    def pending_count(self) -> int:
        """Changes taken but not applied yet (held back by the skew guard, or behind one)."""
        return sum(self._pending.values())

    @property
    def peers(self) -> tuple[str, ...]:
        """The registered peers: the log is kept until each of them has a change."""
        return tuple(sorted(self._peer_has))

    def peer_has(self, peer: str) -> VersionVector:
        """What ``peer`` last said it has (empty when it never said)."""
        return self._peer_has.get(peer, VersionVector())

    def statistics(self) -> NodeStatistics:
        c = self._counters
        return NodeStatistics(
            self._writes,
            c.applied,
            c.duplicates,
            c.rejected,
            c.conflicts,
            c.set_aside,
            c.deferred,
            c.superseded,
        )

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
        (change,) = await self._write([(key, _checked_value(value), context)])
        return change

    async def delete(self, key: str, *, context: VersionVector | None = None) -> Change:
        """Delete ``key``: write a tombstone that supersedes what ``context`` covers (without
        it, every version this node has seen). A write the delete did not see survives it;
        a merge function sees the delete as :data:`~multistore.core.DELETED`."""
        (change,) = await self._write([(key, DELETED, context)])
        return change

    async def put_many(self, items: Mapping[str, Any]) -> list[Change]:
        """Blind-write several keys in one local transaction (one change per key)."""
        if not isinstance(items, Mapping):
            raise InvalidValueError(f"put_many takes a mapping of key -> value, got {items!r}")
        return await self._write([(key, _checked_value(v), None) for key, v in items.items()])

    async def _write(self, items: list[tuple[str, Any, VersionVector | None]]) -> list[Change]:
        if self._crdt:
            raise UsageError("this node's values are CRDTs: change them with update()")
        for key, _, context in items:
            _check_key(key)
            if context is not None and not isinstance(context, VersionVector):
                raise InvalidValueError(f"context must be a VersionVector, got {context!r}")
        changes: list[Change] = []
        async with self._locked():
            conflict_id = self._conflict_id
            async with self._transaction() as (tx, on_commit):
                work = Work(tx, SiblingSet.from_dict, self._pos, self._cache)
                await work.load(key for key, _, _ in items)
                for key, value, context in items:
                    before: SiblingSet[Any] = work.get(key) or SiblingSet()
                    hlc = self.clock.now()
                    if context is None:  # blind: supersedes everything this node has seen
                        after, version = before.overwrite(value, node=self.node_id, hlc=hlc)
                    else:
                        written = before.write(value, node=self.node_id, hlc=hlc, context=context)
                        after, version = written.siblings, written.version
                    change = Change(self.node_id, self._seq + len(changes) + 1, key, version)
                    work.set(key, after)
                    work.append(change.origin, change.seq, key, hlc, dumps(change.to_dict()))
                    if len(after) > 1:
                        conflict_id = self._applier.record(work, change, after, conflict_id)
                    changes.append(change)
                await work.flush(SiblingSet.to_dict)
                on_commit(lambda: self._commit_local(work, len(changes), conflict_id))
        return changes

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
        async with self._locked(), self._transaction() as (tx, on_commit):
            work = Work(tx, self._applier.decode_crdt, self._pos, self._cache)
            await work.load([key])
            current: Versioned[Any] | None = work.get(key)
            state: Any = current.value.copy() if current is not None else factory(self.node_id)
            delta = mutate(state)
            if not isinstance(delta, CRDT):
                raise InvalidValueError(
                    f"mutate must return the CRDT delta (the mutator's result), got {delta!r}"
                )
            hlc = self.clock.now()
            vv = (current.vv if current is not None else VersionVector()).increment(self.node_id)
            change = Change(
                self.node_id,
                self._seq + 1,
                key,
                Versioned(delta.to_dict(), hlc, vv, self.node_id),
            )
            work.set(key, Versioned(state, hlc, vv, self.node_id))
            work.append(change.origin, change.seq, key, hlc, dumps(change.to_dict()))
            await work.flush(encode_crdt)
            on_commit(lambda: self._commit_local(work, 1, self._conflict_id))
        return change

    def _commit_local(self, work: Work, writes: int, conflict_id: int) -> None:
        work.committed()
        self._seq += writes
        self._writes += writes
        self._pos = work.pos
        self._counters.conflicts += conflict_id - self._conflict_id
        self._conflict_id = conflict_id

    # -- reading --------------------------------------------------------------------

    async def _state(self, key: str) -> Any:
        _check_key(key)
        text = await self._store.fetch_val("SELECT state FROM mm_data WHERE key = :k", {"k": key})
        if text is None:
            return None
        return self._applier.decoder()(loads(text))

    async def read(self, key: str) -> Resolution[Any] | None:
        """The resolver's view of ``key`` (winner, merged value or siblings; deletes appear
        as :data:`~multistore.core.DELETED`), or None when the key was never written."""
        state = await self._state(key)
        if state is None:
            return None
        if self._crdt:
            return Resolution(state)
        return self._applier.view(state)[0]

    async def read_with_context(self, key: str) -> KeyRead:
        """The current value(s) of ``key`` and the causal context to pass to :meth:`put` or
        :meth:`delete` when writing based on them (read-modify-write without lost updates)."""
        state = await self._state(key)
        if state is None:
            return KeyRead((), VersionVector())
        if self._crdt:
            return KeyRead((plain(state.value),), state.vv)
        shown = self._applier.view(state)[0].values
        live = tuple(plain(v) for v in shown if v is not DELETED)
        return KeyRead(live, state.context, deleted=len(live) < len(shown))

    async def values(self, key: str) -> tuple[Any, ...]:
        """The current value(s) of ``key``: one, or several concurrent siblings; () if absent
        or deleted."""
        resolution = await self.read(key)
        if resolution is None:
            return ()
        return tuple(plain(value) for value in resolution.values if value is not DELETED)

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
        """Every present key's current value(s), as :meth:`values` gives them (deleted keys
        are left out)."""
        rows = await self._store.fetch_all("SELECT key FROM mm_data ORDER BY key")
        found = {row[0]: await self.values(row[0]) for row in rows}
        return {key: values for key, values in found.items() if values}

    async def export(self) -> dict[str, Any]:
        """Every key's stored state (causal metadata and tombstones included), for
        convergence checks."""
        rows = await self._store.fetch_all("SELECT key, state FROM mm_data ORDER BY key")
        return {row[0]: loads(row[1]) for row in rows}

    async def changes_after(self, pos: int, limit: int = 500) -> tuple[list[Change], int]:
        """Up to ``limit`` changes of this node's log after local position ``pos`` (rows
        already trimmed are gone, stubs of superseded changes are left out), and the
        position reached."""
        rows = await self._store.fetch_all(
            "SELECT pos, body FROM mm_log WHERE pos > :pos ORDER BY pos LIMIT :n",
            {"pos": pos, "n": limit},
        )
        bodies = [loads(row[1]) for row in rows]
        changes = [Change.from_dict(body) for body in bodies if not is_stub(body)]
        return changes, (int(rows[-1][0]) if rows else pos)

    async def changes_for(
        self, have: VersionVector, limit: int = 500, *, origins: Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` changes (wire form) that a peer which has ``have`` lacks, each
        origin's in sequence order; only of ``origins`` when given. A change that a later
        one in the list supersedes goes as a stub (:func:`._changelog.coalesce`)."""
        mine = self.received
        wanted = sorted(mine if origins is None else set(origins) & set(mine))
        found: list[dict[str, Any]] = []
        for origin in wanted:
            after = have.get_count(origin)
            if mine.get_count(origin) <= after or len(found) >= limit:
                continue
            rows = await self._store.fetch_all(
                "SELECT seq, body FROM mm_log WHERE origin = :o AND seq > :s ORDER BY seq LIMIT :n",
                {"o": origin, "s": after, "n": limit - len(found)},
            )
            if rows and int(rows[0][0]) != after + 1:
                continue  # trimmed: this peer was not registered when the others had it
            found += [loads(row[1]) for row in rows]
        return found if self._crdt else coalesce(found)

    async def log_size(self) -> int:
        """Rows in the change log now (it is trimmed once every registered peer has them)."""
        return int(await self._store.fetch_val("SELECT COUNT(*) FROM mm_log"))

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
                    int(row[0]),
                    row[1],
                    row[2],
                    row[3],
                    int(row[4]),
                    losers,
                    tuple(body["values"]),
                    body.get("error"),
                )
            )
        return records

    async def conflict_count(self) -> int:
        return int(await self._store.fetch_val("SELECT COUNT(*) FROM mm_conflicts"))

    async def rejected(self) -> list[RejectedChange]:
        """Changes held back now: by the skew guard, or behind such a change to the same
        key from the same origin (``skew_ms`` 0)."""
        rows = await self._store.fetch_all(
            "SELECT body, skew_ms FROM mm_pending ORDER BY origin, seq"
        )
        return [RejectedChange(Change.from_dict(loads(row[0])), int(row[1])) for row in rows]

    async def rejected_count(self) -> int:
        return self.pending_count

    # -- peers ----------------------------------------------------------------------

    async def add_peer(self, peer: str) -> None:
        """Register ``peer``: from now on a log row is kept until the peer has it too."""
        if peer == self.node_id:
            raise UsageError(f"node {peer!r} cannot be its own peer")
        async with self._locked():
            if peer in self._peer_has:
                return
            async with self._transaction() as (tx, on_commit):
                await self._save_peer(tx, peer, VersionVector())
                on_commit(lambda: self._peer_has.__setitem__(peer, VersionVector()))

    async def forget_peer(self, peer: str) -> None:
        """Unregister a peer that left the group for good (the log stops waiting for it)."""
        async with self._locked():
            peer_has = {p: has for p, has in self._peer_has.items() if p != peer}
            async with self._transaction() as (tx, on_commit):
                await tx.execute("DELETE FROM mm_peer_has WHERE peer = :p", {"p": peer})
                floors = await self._trim(tx, peer_has, self.received, self._pos)
                on_commit(lambda: self._noted_peers(peer_has, floors))

    async def record_peer(self, peer: str, has: VersionVector) -> None:
        """``peer`` says it has ``has``: remember it (registering the peer) and trim the log
        below what every registered peer has."""
        async with self._locked():
            peer_has = self._merge_peer(peer, has)
            if peer_has is None:
                return
            async with self._transaction() as (tx, on_commit):
                await self._save_peer(tx, peer, peer_has[peer])
                floors = await self._trim(tx, peer_has, self.received, self._pos)
                on_commit(lambda: self._noted_peers(peer_has, floors))

    def _noted_peers(self, peer_has: dict[str, VersionVector], floors: dict[str, int]) -> None:
        self._peer_has = peer_has
        self._trimmed.update(floors)

    def _merge_peer(self, peer: str, has: VersionVector) -> dict[str, VersionVector] | None:
        """The peers' vectors with what ``peer`` now says it has; None when nothing is new."""
        if peer == self.node_id:
            return None
        known = self._peer_has.get(peer)
        merged = has if known is None else known.merge(has)
        if merged == known:
            return None
        return {**self._peer_has, peer: merged}

    async def _save_peer(self, tx: Transaction, peer: str, has: VersionVector) -> None:
        await tx.execute(
            "INSERT INTO mm_peer_has (peer, has) VALUES (:p, :has) "
            "ON CONFLICT (peer) DO UPDATE SET has = excluded.has",
            {"p": peer, "has": dumps(has.to_dict())},
        )

    async def _trim(
        self,
        tx: Transaction,
        peer_has: Mapping[str, VersionVector],
        received: VersionVector,
        pos: int,
    ) -> dict[str, int]:
        """Delete the log rows every registered peer has; return the new floors per origin
        (``received``: what this node has, ``pos``: its log head, both as of this
        transaction)."""
        floors: dict[str, int] = {}
        if not peer_has:
            return floors
        for origin, top in received.items():
            floor = min(min(has.get_count(origin) for has in peer_has.values()), top)
            if floor > self._trimmed.get(origin, 0):
                await tx.execute(
                    "DELETE FROM mm_log WHERE origin = :o AND seq <= :s",
                    {"o": origin, "s": floor},
                )
                floors[origin] = floor
        if floors:  # what the deleted rows would have told a restart
            await _set_meta(tx, "pos", str(pos))
            await _set_meta(tx, "clock", str(self.clock.last or self.clock.now()))
            await tx.execute(
                "INSERT INTO mm_origins (origin, received) VALUES (:o, :s) "
                "ON CONFLICT (origin) DO UPDATE SET received = excluded.received",
                {"o": self.node_id, "s": self._seq},
            )
        return floors

    # -- receiving ------------------------------------------------------------------

    async def apply_batch(
        self,
        peer: str,
        changes: Sequence[Change | Mapping[str, Any]],
        *,
        peer_has: VersionVector | None = None,
    ) -> VersionVector:
        """Take ``changes`` from ``peer`` (decoded, or in wire form) and return what this
        node has afterwards (:attr:`received`, for the acknowledgement).

        Each origin's changes are taken in sequence order; duplicates and changes
        ahead of a missing one are skipped. ``peer_has`` — what the peer says it
        has — is recorded in the same transaction.
        """
        async with self._locked():
            counters = Counters()
            received = dict(self._received)
            taken: list[tuple[Change | Opaque, Change | Mapping[str, Any]]] = []
            for item in changes:
                change = decode_item(item)
                if change is None:
                    counters.deferred += 1  # not even its origin and number could be read
                    continue
                have = received.get(change.origin, 0)
                if change.origin == self.node_id or change.seq <= have:
                    counters.duplicates += 1
                elif change.seq > have + 1:
                    counters.deferred += 1
                else:
                    received[change.origin] = change.seq
                    taken.append((change, item))
            conflict_id = self._conflict_id
            pending = dict(self._pending)
            peers = None if peer_has is None else self._merge_peer(peer, peer_has)
            floors: dict[str, int] = {}
            async with self._transaction() as (tx, on_commit):
                work = Work(tx, self._applier.decoder(), self._pos, self._cache)
                known = peers or self._peer_has
                if known:
                    work.everyone_has = {
                        origin: min(has.get_count(origin) for has in known.values())
                        for origin in {c.origin for c, _ in taken}
                    }
                await work.load(c.key for c, _ in taken if isinstance(c, Change))
                for change, item in taken:
                    work.progress(change.origin, change.seq)
                    conflict_id = self._applier.take(
                        work, change, item, pending, conflict_id, counters
                    )
                if counters.applied and self.clock.last is not None:
                    # receive events moved the clock past the changes' own stamps: keep it
                    await _set_meta(tx, "clock", str(self.clock.last))
                await work.flush(self._applier.encoder())
                if peers is not None:
                    await self._save_peer(tx, peer, peers[peer])
                if peers is not None or work.log_rows:
                    has = VersionVector({**received, self.node_id: self._seq})
                    floors = await self._trim(tx, peers or self._peer_has, has, work.pos)

                def note() -> None:
                    work.committed()
                    if peers is not None:
                        self._peer_has = peers
                    self._trimmed.update(floors)
                    self._received, self._pos, self._pending = received, work.pos, pending
                    self._conflict_id = conflict_id
                    self._counters.add(counters)

                on_commit(note)
        return self.received

    async def retry_pending(self) -> int:
        """Try the held-back changes again, each key's in order; return how many were applied."""
        async with self._locked():
            if not self._pending:
                return 0
            rows = await self._store.fetch_all(
                "SELECT origin, seq, key, skew_ms, body FROM mm_pending ORDER BY origin, seq"
            )
            counters = Counters()
            conflict_id = self._conflict_id
            pending = dict(self._pending)
            async with self._transaction() as (tx, on_commit):
                work = Work(tx, self._applier.decoder(), self._pos, self._cache)
                await work.load(row[2] for row in rows)
                blocked: set[tuple[str, str]] = set()
                for row in rows:
                    origin, seq, key, body = row[0], row[1], row[2], row[4]
                    ident = (origin, key)
                    if ident in blocked:
                        continue
                    change = Change.from_dict(loads(body))
                    try:
                        self.clock.observe(change.hlc)
                    except ClockSkewError as exc:
                        counters.rejected += 1
                        blocked.add(ident)
                        await tx.execute(
                            "UPDATE mm_pending SET skew_ms = :skew WHERE origin = :o AND seq = :s",
                            {"skew": max(exc.skew_ms, 1), "o": origin, "s": seq},
                        )
                        continue
                    conflict_id = self._applier.apply(work, change, conflict_id, counters)
                    work.released.append({"o": origin, "s": seq})
                    pending[ident] -= 1
                    if not pending[ident]:
                        del pending[ident]
                if counters.applied:
                    await _set_meta(tx, "clock", str(self.clock.last))
                await work.flush(self._applier.encoder())

                def note() -> None:
                    work.committed()
                    self._pending, self._conflict_id = pending, conflict_id
                    self._counters.add(counters)

                on_commit(note)
        return counters.applied + counters.set_aside


async def _outlast(task: asyncio.Future[None]) -> None:
    """Await ``task`` to its end even if the caller is cancelled meanwhile (``task`` is
    not cancelled with it); then raise the caller's cancellation, if there was one, or
    the task's error."""
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not task.cancelled():
            task.exception()  # retrieved: the caller's cancellation is what it sees
        raise asyncio.CancelledError
    task.result()


_CACHED_KEYS = 10_000
"""Decoded key states a node keeps in memory (the hot keys skip decoding)."""


async def _set_meta(tx: Transaction, name: str, value: str) -> None:
    await tx.execute(
        "INSERT INTO mm_meta (name, value) VALUES (:n, :v) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        {"n": name, "v": value},
    )


def _checked_value(value: Any) -> Any:
    """A value for put(); whether JSON can hold it is checked as the write is encoded, in
    its transaction (so a refused value leaves nothing written)."""
    if value is DELETED:
        raise InvalidValueError("write DELETED with delete(), not put()")
    return value


def _check_key(key: object) -> None:
    if not isinstance(key, str) or not key:
        raise InvalidValueError(f"a key must be a non-empty string, got {key!r}")
