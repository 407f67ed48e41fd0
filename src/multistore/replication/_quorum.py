"""Dynamo-style quorum replication: the coordinator.

M nodes (:mod:`._qnodes`, on Redis :mod:`._qredis`) sit on a consistent-hash ring
with virtual nodes; each key lives on the N nodes of its preference list. A write
fans out to those N concurrently and returns once W have acknowledged; a read asks
R of them and returns once R have answered — the others finish in the background.
A read still short of R answers ``speculative_after`` seconds after it started gets
a *speculative* retry to a further replica (Cassandra's speculative retry), so one
slow or partitioned node does not set the read latency.

Values are versioned: each write gets an HLC timestamp and a version vector whose
actor is the coordinator (Dynamo's scheme), and is stored on a node as a sibling
set (:class:`~multistore.core.SiblingSet`). With the default :class:`LWW`
resolver a node keeps the version with the greatest HLC, checked atomically on
the node (one Lua script on Redis); with :class:`KeepSiblings` or a
:class:`MergeFunction` nodes merge sibling sets with a compare-and-set, reads
return concurrent versions as siblings (or the merged value), and a write that
passes the read's ``context`` supersedes what that read saw.

* **Read repair**: replicas that answered a read with an older state get the
  newest; the read waits for those repairs when R is a quorum (so reads are
  monotonic, as in Cassandra 4), and lets them run in the background otherwise.
* **Strict or sloppy quorums, hinted handoff**: a write whose home replica is down
  (or fails) keeps a hint in a durable :class:`HintStore`;
  :meth:`QuorumCluster.deliver_hints` hands the record to the home node when it
  answers again. In a strict quorum (the default, as Cassandra) a hint counts for
  nothing toward W; in a sloppy one (``QuorumConfig(sloppy=True)``, as Riak) the next
  node on the ring stands in for the home meanwhile, and its acknowledgement counts.
  A request that cannot meet its level with the replicas up sends nothing and fails
  definitely (Cassandra's Unavailable). Hints older than ``hint_window`` (or for a
  node down longer than that) are dropped and counted, as Cassandra's
  ``max_hint_window``, and so is a hint the hint store fails to keep (hints are best
  effort); anti-entropy repairs what they would have carried. A hint naming a
  stand-in is dropped only once the stand-in's copy is back on its home (anti-entropy
  never looks at a stand-in's copy), and a write whose such hint cannot be kept fails
  as indeterminate.
* **Membership changes** (:mod:`._qmembership`): while one is under way a write is
  acknowledged once W of its replicas on the current ring and W on the new one hold it.
* **Failure detection**: a threshold detector (:mod:`._qdetector`) marks a node
  down after consecutive failures; requests skip it until it is due for a probe.
* **Anti-entropy**: Merkle trees per shared token range (:mod:`._antientropy`).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import math
import os
import random
import secrets
import time
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from multistore.core import (
    LWW,
    HybridClock,
    KeepSiblings,
    Resolver,
    SiblingSet,
    Versioned,
    VersionVector,
)
from multistore.core._hlc import MAX_PHYSICAL_MS, HLCTimestamp, SkewPolicy
from multistore.core._quorum import Level, QuorumConfig, home_count, required
from multistore.core._ring import HashRing
from multistore.errors import (
    InvalidValueError,
    MultistoreError,
    Outcome,
    StoreError,
    StoreTimeoutError,
    UsageError,
)
from multistore.replication._antientropy import RepairReport, anti_entropy
from multistore.replication._handoff import deliver_hints, hint, late_write_hinter, record_hints
from multistore.replication._hints import HintStore
from multistore.replication._qdetector import ThresholdDetector
from multistore.replication._qerrors import QuorumError
from multistore.replication._qfanout import Fanout, fan_out
from multistore.replication._qmembership import (
    MembershipChange,
    NewReplicas,
    add_node,
    check_new_replicas,
    cleanup,
    remove_node,
    write_new_replicas,
)
from multistore.replication._qnodes import QuorumNode, Record, SQLiteNode, when_done
from multistore.replication._qredis import RedisNode

__all__ = [
    "TOMBSTONE",
    "QuorumCluster",
    "QuorumError",
    "ReadResult",
    "ScanRow",
    "WeakQuorumWarning",
    "WriteResult",
    "coordinator_id",
    "decode_set",
    "decode_version",
    "encode_set",
    "quorum_status",
]

T = TypeVar("T")

TOMBSTONE: Final[dict[str, Any]] = {"d": 1}
_CAS_ATTEMPTS: Final = 16
_PLACEMENT_CACHE: Final = 65_536
"""Groups whose ring placement the coordinator remembers (the cache is cleared when full)."""


class _Identity:
    """This process's random token and a counter of the coordinators it made."""

    token = ""
    serial = itertools.count(1)

    @classmethod
    def reset(cls) -> None:
        cls.token = secrets.token_hex(6)
        cls.serial = itertools.count(1)


_Identity.reset()
if hasattr(os, "register_at_fork"):  # a forked child must not reuse its parent's ids
    os.register_at_fork(after_in_child=_Identity.reset)


def coordinator_id() -> str:
    """A fresh coordinator id, ``c-<48 random bits in hex>-<serial>``.

    Unique by construction within a process (the serial), and across processes by
    the random token drawn once per process (again in a forked child): the actor of
    the coordinator's version vectors and the tie-break of its HLC stamps.
    """
    return f"c-{_Identity.token}-{next(_Identity.serial)}"


class WeakQuorumWarning(UserWarning):
    """R + W <= N: reads may miss the latest acknowledged write."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    version: Versioned[Any]
    acks: tuple[str, ...]
    """Nodes that acknowledged in time (fallbacks included)."""
    hinted: tuple[str, ...]
    """Home nodes that failed and got a hint instead."""


@dataclass(frozen=True, slots=True)
class ReadResult:
    versions: tuple[Versioned[Any], ...]
    """The live versions after resolution (one with LWW; siblings otherwise)."""
    context: VersionVector
    """Everything the read saw: pass it to ``put(..., context=)`` to supersede it."""
    replicas: tuple[str, ...] = ()
    repaired: tuple[str, ...] = ()

    @property
    def found(self) -> bool:
        return bool(self.versions)

    @property
    def values(self) -> tuple[Any, ...]:
        return tuple(v.value["v"] for v in self.versions)

    @property
    def value(self) -> Any:
        """The value (None when not found); UsageError when siblings remain."""
        if not self.versions:
            return None
        if len(self.versions) > 1:
            raise UsageError(
                f"{len(self.versions)} concurrent siblings; read .values and write the "
                "merged value with context=result.context"
            )
        return self.versions[0].value["v"]


@dataclass(frozen=True, slots=True)
class ScanRow:
    member: bytes
    result: ReadResult


@dataclass
class _Stats:
    reads: int = 0
    writes: int = 0
    read_repairs: int = 0
    speculative_retries: int = 0
    sloppy_writes: int = 0
    hints_recorded: int = 0
    hints_delivered: int = 0
    hints_dropped: int = 0
    anti_entropy: dict[str, int] = field(default_factory=dict)


def encode_set(siblings: SiblingSet[Any]) -> bytes:
    try:
        return json.dumps(siblings.to_dict(), separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidValueError(f"a quorum value must be JSON-serialisable: {exc}") from None


def decode_set(blob: bytes) -> SiblingSet[Any]:
    return SiblingSet.from_dict(json.loads(blob))


def encode_version(version: Versioned[Any], hlc: str) -> bytes:
    """``encode_set(SiblingSet([version]))`` without building the set (the write path).

    ``hlc`` is ``str(version.hlc)``. A lone version is never covered by another and
    the set's context is its own vector, so the JSON is the same byte for byte.
    """
    vv = version.vv.to_dict()
    data = {
        "versions": [{"value": version.value, "hlc": hlc, "vv": vv, "origin": version.origin}],
        "context": vv,
    }
    try:
        return _dumps(data).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidValueError(f"a quorum value must be JSON-serialisable: {exc}") from None


_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def decode_version(blob: bytes) -> Versioned[Any] | None:
    """The version in a blob :func:`encode_version` wrote — one version whose history
    is the set's whole context — or None for any other sibling set (decode those with
    :func:`decode_set`). The read path's shortcut: it builds no set, and one vector."""
    data = json.loads(blob)
    if type(data) is not dict or len(data) != 2:
        return None
    versions = data.get("versions")
    if type(versions) is not list or len(versions) != 1:
        return None
    item = versions[0]
    if type(item) is not dict or item.get("vv") != data.get("context"):
        return None
    version = Versioned.from_dict(item)
    # its own event must be in its history (decode_set says why when it is not)
    return version if version.vv.get_count(version.origin) else None


def _newest_hlc(siblings: SiblingSet[Any]) -> str:
    newest = siblings.newest
    assert newest is not None
    return str(newest.hlc)


class QuorumCluster:
    """A coordinator over M quorum nodes; see the module docstring."""

    def __init__(
        self,
        nodes: Sequence[QuorumNode],
        *,
        hints: HintStore,
        config: QuorumConfig | None = None,
        vnodes: int = 64,
        resolver: Resolver | None = None,
        timeout: float = 1.0,
        speculative_after: float | None = 0.05,
        hint_window: float = 3600.0,
        clock: Callable[[], float] = time.time,
        hlc_now_ms: Callable[[], int] | None = None,
        node_id: str | None = None,
        failure_threshold: int = 3,
        probe_after: float = 1.0,
        read_from: Literal["random", "fastest"] = "random",
    ) -> None:
        _check_tunables(timeout, speculative_after, hint_window, failure_threshold, probe_after)
        names = [node.name for node in nodes]
        if len(set(names)) != len(names) or not names:
            raise InvalidValueError(f"quorum nodes need unique names, got {names}")
        self.config = config or QuorumConfig()
        if self.config.n > len(nodes):
            raise InvalidValueError(
                f"replication factor N={self.config.n} exceeds the {len(nodes)} nodes"
            )
        _warn_if_weak(self.config)
        self._placements: dict[bytes, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self.ring = HashRing(names, vnodes=vnodes)
        self._need_r = self.config.read_count
        self._need_w = self.config.write_count
        self._sloppy = self.config.sloppy
        self.resolver: Resolver = resolver if resolver is not None else LWW()
        self._lww = isinstance(self.resolver, LWW)
        self.timeout = timeout
        self.speculative_after = speculative_after
        self.hint_window = hint_window
        self.hints = hints
        self.clock = clock
        now_ms = hlc_now_ms or (lambda: time.time_ns() // 1_000_000)
        actor = coordinator_id()
        if node_id is None:
            node_id = actor
        else:  # a name given again after a restart must not stamp as the run before did
            valid = HLCTimestamp(0, 0, node_id).node  # InvalidValueError if it is not
            actor = f"{valid}/{actor.removeprefix('c-')}"
        # no skew guard: a context from a clock far ahead still orders the write after it
        self._hlc = HybridClock(actor, now_ms=now_ms, policy=SkewPolicy.FLAG)
        self.node_id = node_id
        """This coordinator's name (``node_id=``, or a fresh :func:`coordinator_id`)."""
        self.actor = actor
        """This coordinator object's version-vector actor and HLC tie-break: its
        ``node_id`` when drawn by :func:`coordinator_id`; a given ``node_id`` followed
        by ``/`` and a part drawn as :func:`coordinator_id` draws it. So no two
        coordinator objects, a restarted one with the same ``node_id`` included, make
        equal stamps or reuse a version-vector counter."""
        self._nodes = {node.name: node for node in nodes}
        self.detector = ThresholdDetector(
            names, threshold=failure_threshold, probe_after=probe_after, clock=clock
        )
        if read_from == "random":
            self._read_order: Callable[[list[str]], list[str]] = _rotate
        elif read_from == "fastest":
            self._read_order = self.detector.fastest_first
        else:
            raise InvalidValueError(f"read_from must be 'random' or 'fastest', got {read_from!r}")
        self.read_from = read_from
        self.stats = _Stats()
        self._background: set[asyncio.Future[Any]] = set()
        self.pending_ring: HashRing | None = None
        """The ring a membership change is moving to (writes go to its new replicas too)."""
        self._generation = 0
        self._in_flight: dict[int, int] = {}
        self._idle: asyncio.Event | None = None
        self._retired: dict[str, QuorumNode] = {}
        self.membership_lock = asyncio.Lock()
        self._loop_task: asyncio.Task[None] | None = None
        self.closed = False

    # -- construction -------------------------------------------------------------------

    @classmethod
    async def embedded(
        cls,
        path: str | Path,
        nodes: int | Sequence[str] = 3,
        *,
        hints_path: str | Path | None = "",
        **options: Any,
    ) -> QuorumCluster:
        """``nodes`` SQLite nodes ``node0`` … (or the names given) in ``path``, one file
        ``<name>.db`` each; hints in ``path/hints.db`` (``hints_path=None``: in memory)."""
        root = Path(path)
        names = [f"node{i}" for i in range(nodes)] if isinstance(nodes, int) else list(nodes)
        opened: list[SQLiteNode] = []
        try:
            for name in names:
                opened.append(await SQLiteNode(name, root / f"{name}.db").open())
            hint_file = root / "hints.db" if hints_path == "" else hints_path
            hints = await HintStore.open(hint_file)
        except BaseException:
            for node in opened:
                await node.close()
            raise
        return await _construct(cls, opened, hints, options)

    @classmethod
    async def redis(
        cls,
        urls: Sequence[str],
        *,
        names: Sequence[str] | None = None,
        hints_path: str | Path | None = None,
        prefix: str = "q:",
        **options: Any,
    ) -> QuorumCluster:
        """One node per Redis URL (named ``names`` or ``node0`` …)."""
        labels = list(names) if names is not None else [f"node{i}" for i in range(len(urls))]
        timeout = float(options.get("timeout", 1.0))
        nodes = [
            RedisNode.from_url(label, url, timeout=max(timeout, 1.0), prefix=prefix)
            for label, url in zip(labels, urls, strict=True)
        ]
        hints = await HintStore.open(hints_path)
        return await _construct(cls, nodes, hints, options)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        await self.wait_background()
        for node in [*self._nodes.values(), *self._retired.values()]:
            await node.close()
        await self.hints.close()

    async def __aenter__(self) -> QuorumCluster:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- introspection ------------------------------------------------------------------

    @property
    def ring(self) -> HashRing:
        return self._ring

    @ring.setter
    def ring(self, ring: HashRing) -> None:
        self._ring = ring
        self._placements.clear()

    def placement(self, group: bytes) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(the N home nodes of ``group``, the other nodes in ring order), cached."""
        hit = self._placements.get(group)
        if hit is None:
            walk = tuple(self._ring.walk(group))
            n = self.config.n
            hit = walk[:n], walk[n:]
            if len(self._placements) >= _PLACEMENT_CACHE:
                self._placements.clear()
            self._placements[group] = hit
        return hit

    @property
    def nodes(self) -> list[str]:
        return list(self._nodes)

    def node(self, name: str) -> QuorumNode:
        try:
            return self._nodes[name]
        except KeyError:
            raise UsageError(f"no quorum node {name!r}; nodes are {self.nodes}") from None

    def preference_list(self, key: str | bytes) -> tuple[str, ...]:
        return self.placement(_group(key))[0]

    async def wipe_node(self, name: str) -> None:
        await self.node(name).wipe()

    async def wait_background(self) -> None:
        """Wait for the requests that finished after their operation returned."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    def start_background(self, interval: float = 0.5, *, repair_every: float | None = None) -> None:
        """Deliver hints every ``interval`` seconds (and run anti-entropy every
        ``repair_every`` seconds, if given) until :meth:`close`."""
        if self._loop_task is None:
            self._loop_task = asyncio.ensure_future(self._maintain(interval, repair_every))

    async def anti_entropy(self, node: str | None = None, *, depth: int = 12) -> RepairReport:
        """Merkle-tree repair of ``node`` against its peers, or of every pair of nodes."""
        self._check_open()
        return await anti_entropy(self, node, depth=depth)

    async def _maintain(self, interval: float, repair_every: float | None) -> None:
        last_repair = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            try:
                await self.deliver_hints()
                if repair_every is not None and time.monotonic() - last_repair >= repair_every:
                    last_repair = time.monotonic()
                    await anti_entropy(self)
            except MultistoreError:
                continue

    # -- public operations --------------------------------------------------------------

    async def put(
        self,
        key: str,
        value: Any,
        *,
        w: Level | None = None,
        pw: int | None = None,
        context: VersionVector | None = None,
    ) -> WriteResult:
        """Write ``value`` (JSON) under ``key``; returns once W replicas acknowledged."""
        return await self.put_record(_group(key), b"", {"v": value}, w=w, pw=pw, context=context)

    async def delete(
        self, key: str, *, w: Level | None = None, context: VersionVector | None = None
    ) -> WriteResult:
        """Write a tombstone for ``key``."""
        return await self.put_record(_group(key), b"", TOMBSTONE, w=w, context=context)

    async def get(self, key: str, *, r: Level | None = None, pr: int | None = None) -> ReadResult:
        """Read ``key`` from R replicas, resolve, repair; see :class:`ReadResult`."""
        return await self.get_record(_group(key), b"", r=r, pr=pr)

    # -- record level (used by the wide-column store) -----------------------------------

    def _version(self, payload: Any, context: VersionVector | None) -> Versioned[Any]:
        """The version a write makes: an HLC stamp, and a vector whose counter for this
        coordinator encodes that stamp (``physical_ms * 2**24 + counter + 1``).

        So a context tells how late the versions it covers were stamped, and a write
        that carries one is stamped after all of them, whatever this coordinator's
        wall clock says: under LWW a read-modify-write never loses to what it read.
        """
        if context is not None and not isinstance(context, VersionVector):
            raise InvalidValueError(
                f"context must be the VersionVector a read returned (.context), got {context!r}"
            )
        if context is None or not context:
            hlc = self._hlc.now()
            counter = hlc.physical_ms * _LOGICAL + hlc.counter + 1  # _counter(hlc), inline
            return Versioned(payload, hlc, VersionVector({self.actor: counter}), self.actor)
        hlc = self._hlc.update(_stamp_of(max(context.values()), self.actor))
        counter = max(_counter(hlc), context.get_count(self.actor) + 1)
        vv = context.merge(VersionVector({self.actor: counter}))
        return Versioned(payload, hlc, vv, self.actor)

    async def put_record(
        self,
        group: bytes,
        member: bytes,
        payload: Any,
        *,
        w: Level | None = None,
        pw: int | None = None,
        context: VersionVector | None = None,
    ) -> WriteResult:
        if self.closed:
            self._check_open()
        need = self._need_w if w is None else required(w, self.config.n)
        pneed = self.config.pw if pw is None else home_count("pw", pw, self.config.n)
        version = self._version(payload, context)
        hlc = str(version.hlc)
        blob = encode_version(version, hlc)
        self.stats.writes += 1

        store: Callable[[QuorumNode], Awaitable[object]]
        if self._lww:  # one atomic check-and-set on the node, no extra coroutine layer

            def store(node: QuorumNode) -> Awaitable[object]:
                return node.write_lww(group, member, hlc, blob)

        else:

            def store(node: QuorumNode) -> Awaitable[object]:
                return self.apply_record(node, group, member, hlc, blob)

        generation = self._generation  # counted in until _leave (membership's barrier)
        in_flight = self._in_flight
        in_flight[generation] = in_flight.get(generation, 0) + 1
        pending = self.pending_ring  # the ring a membership change is moving to, if any
        try:
            moving = None
            if pending is not None:  # its replicas on the new ring must be up too
                moving = check_new_replicas(self, pending, group, need, pneed)
            fan = await self._fanout(group, need, pneed, store, write=True)
            if fan.unavailable:
                raise QuorumError(
                    f"write of {group!r} not sent: fewer than the {need} replicas it needs "
                    f"are up ({fan.describe_errors()})",
                    acks=(),
                    required=need,
                    outcome=Outcome.DEFINITE,
                )
            acks = tuple(fan.results)
            total, primary = fan.counts(write=True)
            failed = total < need or primary < pneed
            maybe_applied = bool(acks or fan.pending or fan.maybe_applied)
            heard = None
            if moving is not None:  # W of its replicas on the new ring as well
                heard = await write_new_replicas(self, moving, fan, need, store, single=self._lww)
                acks += tuple(sorted(heard.acked.difference(acks)))
                maybe_applied = maybe_applied or bool(heard.acked) or heard.maybe_applied
                failed = failed or len(heard.acked) < need or len(heard.acked) < pneed
            if failed and not maybe_applied:
                # every replica refused definitely: no hint either, so it never will apply
                raise QuorumError(
                    f"write of {group!r} refused by every replica ({fan.describe_errors()})",
                    acks=(),
                    required=need,
                    outcome=Outcome.DEFINITE,
                )
            hinted: tuple[str, ...] = ()
            try:
                if fan.failed_homes or fan.stand_in:
                    hinted = await record_hints(self, group, member, hlc, blob, fan)
                if heard is not None:
                    for name in heard.failed:
                        if await hint(self, name, group, member, hlc, blob, ""):
                            hinted += (name,)
            except MultistoreError as exc:
                # Only a hint leading to a stand-in's copy fails here: the replicas
                # hold the write, but it cannot be acknowledged without the hint.
                raise QuorumError(
                    f"write of {group!r} reached {total} of the {need} replicas it needs, "
                    f"but its hint could not be kept ({exc}); it may still apply",
                    acks=acks,
                    required=need,
                    outcome=Outcome.INDETERMINATE,
                ) from exc
            for task, name in fan.pending.items():
                if name in fan.homes:
                    when_done(task, late_write_hinter(self, group, member, hlc, blob, name))
            if failed:
                raise QuorumError(
                    f"write of {group!r} reached {total} of the {need} replicas it needs"
                    f"{_on_new_ring(heard)} ({fan.describe_errors()}); it may still apply",
                    acks=acks,
                    required=need,
                    outcome=Outcome.INDETERMINATE,
                )
            return WriteResult(version, acks, hinted)
        finally:
            self._leave(generation)

    async def get_record(
        self, group: bytes, member: bytes, *, r: Level | None = None, pr: int | None = None
    ) -> ReadResult:
        if self.closed:
            self._check_open()
        need = self._need_r if r is None else required(r, self.config.n)
        pneed = self.config.pr if pr is None else home_count("pr", pr, self.config.n)
        self.stats.reads += 1

        def read(node: QuorumNode) -> Awaitable[Record | None]:
            return node.read(group, member)

        generation = self._generation  # counted in until _leave (membership's barrier)
        in_flight = self._in_flight
        in_flight[generation] = in_flight.get(generation, 0) + 1
        try:
            fan = await self._fanout(group, need, pneed, read, write=False)
            self._check_read(group, fan, need, pneed)
            result, target, stale = self._resolve(_answers(fan) if fan.stand_in else fan.results)
            if target is None or not stale:
                return result
            await self._finish_repairs(
                group,
                [(len(result.replicas) - len(stale), self._repair(group, member, target, stale))],
                need,
            )
            return ReadResult(result.versions, result.context, result.replicas, tuple(stale))
        finally:
            self._leave(generation)

    async def scan_records(
        self,
        group: bytes,
        lo: bytes | None,
        hi: bytes | None,
        *,
        reverse: bool = False,
        limit: int | None = None,
        r: Level | None = None,
    ) -> tuple[list[ScanRow], bool]:
        """Records of one group in member order, merged over R replicas and repaired.

        The flag is True when some replica returned ``limit`` records (there may be
        more: the caller asks again with a larger limit if tombstones ate its rows).
        """
        self._check_open()
        need = required(self.config.r if r is None else r, self.config.n)
        self.stats.reads += 1

        async def scan(node: QuorumNode) -> list[tuple[bytes, Record]]:
            return await node.scan(group, lo, hi, reverse=reverse, limit=limit)

        generation = self._generation  # counted in until _leave (membership's barrier)
        in_flight = self._in_flight
        in_flight[generation] = in_flight.get(generation, 0) + 1
        try:
            return await self._scan(group, scan, need, reverse, limit)
        finally:
            self._leave(generation)

    async def _scan(
        self,
        group: bytes,
        scan: Callable[[QuorumNode], Awaitable[list[tuple[bytes, Record]]]],
        need: int,
        reverse: bool,
        limit: int | None,
    ) -> tuple[list[ScanRow], bool]:
        fan = await self._fanout(group, need, 0, scan, write=False)
        self._check_read(group, fan, need, 0)
        members: set[bytes] = set()
        for rows in fan.results.values():
            members.update(m for m, _ in rows)
        ordered = sorted(members, reverse=reverse)
        truncated = limit is not None and any(len(rows) >= limit for rows in fan.results.values())
        if limit is not None and truncated:
            # Only members up to the last one every full replica returned are certain.
            for rows in fan.results.values():
                if len(rows) >= limit:
                    last = rows[-1][0]
                    ordered = [m for m in ordered if (m >= last if reverse else m <= last)]
        out: list[ScanRow] = []
        repairs: list[tuple[int, list[asyncio.Task[bool]]]] = []
        by_node = {name: dict(rows) for name, rows in _answers(fan).items()}
        for m in ordered:
            records = {name: rows.get(m) for name, rows in by_node.items()}
            result, target, stale = self._resolve(records)
            if target is not None and stale:
                repairs.append((len(records) - len(stale), self._repair(group, m, target, stale)))
            out.append(ScanRow(m, result))
        await self._finish_repairs(group, repairs, need)
        return out, truncated

    # -- membership -----------------------------------------------------------------------

    async def add_node(self, node: QuorumNode, *, cleanup: bool = True) -> MembershipChange:
        """Bootstrap ``node`` into the ring: stream it the ranges it will replicate,
        then switch the ring (see :mod:`._qmembership`)."""
        self._check_open()
        return await add_node(self, node, cleanup=cleanup)

    async def cleanup(self, before: HashRing) -> int:
        """After ``add_node(node, cleanup=False)``: have the nodes that replicated a range
        on ring ``before`` (``cluster.ring`` as it was) and no longer do forget its
        records; returns how many were removed (see :mod:`._qmembership`). Split from
        the join so a caller can record the new membership first: once records are
        forgotten, only the new ring holds every key on W replicas."""
        self._check_open()
        return await cleanup(self, before)

    async def remove_node(self, name: str) -> MembershipChange:
        """Decommission node ``name``: stream its ranges to the nodes that take them
        over, then switch the ring (see :mod:`._qmembership`)."""
        self._check_open()
        return await remove_node(self, name)

    def _leave(self, generation: int) -> None:
        """Count out a request counted in under ``generation`` (the ring it began with)."""
        left = self._in_flight[generation] - 1
        if left:
            self._in_flight[generation] = left
            return
        del self._in_flight[generation]
        idle = self._idle
        if idle is not None:
            idle.set()

    async def drain(self) -> None:
        """Start a new generation of requests and wait for the older ones to finish
        (the membership change's barrier: none of them still uses the old placement)."""
        self._generation += 1
        current = self._generation
        while any(generation < current for generation in self._in_flight):
            self._idle = asyncio.Event()
            await self._idle.wait()
        self._idle = None

    def join(self, node: QuorumNode) -> None:
        """Give the coordinator a handle on a node that is not on the ring yet."""
        if node.name in self._nodes:
            raise InvalidValueError(f"a node named {node.name!r} is already in the cluster")
        self._nodes[node.name] = node
        self.detector.add(node.name)

    def switch_ring(self, ring: HashRing) -> None:
        """Place keys by ``ring`` from now on; a node it drops is retired (its handle
        is closed with the cluster)."""
        for name in [n for n in self._nodes if n not in ring]:
            self._retired[name] = self._nodes.pop(name)
            self.detector.remove(name)
        self.ring = ring
        self.pending_ring = None

    # -- internals ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise UsageError("the quorum cluster is closed")

    def _check_read(self, group: bytes, fan: Fanout, need: int, pneed: int) -> None:
        total, primary = fan.counts(write=False)
        if total < need or primary < pneed:
            raise QuorumError(
                f"read of {group!r} got {total} of the {need} answers it needs "
                f"({fan.describe_errors()})",
                acks=list(fan.results),
                required=need,
                outcome=Outcome.DEFINITE,
            )

    async def apply_record(
        self, node: QuorumNode, group: bytes, member: bytes, hlc: str, blob: bytes
    ) -> None:
        """Apply a record to one node: LWW on the node, or a merge with compare-and-set."""
        if self._lww:
            await node.write_lww(group, member, hlc, blob)
            return
        incoming = decode_set(blob)
        for _ in range(_CAS_ATTEMPTS):
            old = await node.read(group, member)
            if old is None:
                merged = incoming
            else:
                current = decode_set(old[1])
                merged = current.merge(incoming)
                if merged == current:
                    return
            if await node.write_cas(group, member, _newest_hlc(merged), encode_set(merged), old):
                return
        raise StoreError(f"node {node.name} kept changing {group!r} during a merge; gave up")

    def call_node(
        self, name: str, fn: Callable[[QuorumNode], Awaitable[T]], *, single: bool = False
    ) -> Awaitable[T]:
        """``fn(node)`` within the request timeout, reported to the failure detector.

        ``single``: ``fn`` makes exactly one call to the node, so a node whose own
        :attr:`~QuorumNode.deadline` is within the timeout needs no second timer;
        and when that call answers with a future (a Redis node's
        :class:`~._qnodes.Reply`), so does this: the detector hears from a listener
        or done-callback, with no coroutine or task between.
        """
        try:
            node = self._nodes[name]
        except KeyError:  # a node that left, asked by a request begun before
            node = self._retired[name]
        deadline = node.deadline
        call = fn(node)
        if single and deadline is not None and deadline <= self.timeout:
            # the node fails the call with StoreTimeoutError in time
            if isinstance(call, asyncio.Future):
                when_done(call, functools.partial(self._observed, name, time.perf_counter()))
                return call
            return self._observe(name, call, None)
        return self._observe(name, call, self.timeout)

    async def _observe(self, name: str, call: Awaitable[T], limit: float | None) -> T:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(limit):  # no extra task, unlike wait_for
                result = await call
        except TimeoutError:
            self.detector.failure(name)
            raise StoreTimeoutError(
                f"quorum node {name} did not answer within {self.timeout} s"
            ) from None
        except MultistoreError:
            self.detector.failure(name)
            raise
        self.detector.success(name, time.perf_counter() - started)
        return result

    def _observed(self, name: str, started: float, call: asyncio.Future[Any]) -> None:
        """The detector's share of a call that answered with a future."""
        if call.cancelled():
            return
        error = call.exception()
        if error is None:
            self.detector.success(name, time.perf_counter() - started)
        elif isinstance(error, MultistoreError):
            self.detector.failure(name)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background; :meth:`wait_background` waits for it."""
        self.track(asyncio.ensure_future(coro))

    def track(self, task: asyncio.Future[Any]) -> None:
        """Let ``task`` (a call nobody awaits any more) finish in the background;
        :meth:`wait_background` waits for it."""
        self._background.add(task)
        when_done(task, self._untrack)

    def _untrack(self, task: asyncio.Future[Any]) -> None:
        self._background.discard(task)
        _consume(task)

    async def _fanout(
        self,
        group: bytes,
        need: int,
        pneed: int,
        fn: Callable[[QuorumNode], Awaitable[Any]],
        *,
        write: bool,
    ) -> Fanout:
        homes, fallbacks = self.placement(group)
        single = self._lww or not write  # a read, scan or LWW write is one node call
        fan = await fan_out(
            functools.partial(self.call_node, fn=fn, single=single),
            homes,
            fallbacks if self._sloppy else (),
            available=self.detector.available,
            need=need,
            pneed=pneed,
            write=write,
            speculative_after=self.speculative_after,
            order=None if write else self._read_order,
        )
        if fan.speculative:
            self.stats.speculative_retries += fan.speculative
        for task in fan.pending:
            self.track(task)
        return fan

    def target_record(self, records: Sequence[Record]) -> Record:
        """The record every replica should hold, given the records some of them hold."""
        if self._lww:
            return max(records, key=lambda rec: rec[0])
        merged: SiblingSet[Any] = SiblingSet()
        for blob in dict.fromkeys(blob for _, blob in records):
            merged = merged.merge(decode_set(blob))
        return _newest_hlc(merged), encode_set(merged)

    def _resolve(
        self, records: dict[str, Record | None]
    ) -> tuple[ReadResult, Record | None, list[str]]:
        """The read result, the record to repair with and the replicas that need it."""
        held = [rec for rec in records.values() if rec is not None]
        if not held:
            return ReadResult((), VersionVector(), tuple(records)), None, []
        target = self.target_record(held)
        stale = [name for name, rec in records.items() if rec != target]
        if self._lww and not stale:  # every replica holds the target: usually one version
            lone = decode_version(target[1])
            if lone is not None:
                found = () if lone.value == TOMBSTONE else (lone,)
                return ReadResult(found, lone.vv, tuple(records)), target, stale
        # replicas in sync hold the same bytes: decode each distinct blob once (merge is
        # idempotent, so the result is the same as merging every replica's copy)
        merged: SiblingSet[Any] | None = None
        for blob in dict.fromkeys(blob for _, blob in held):
            decoded = decode_set(blob)
            merged = decoded if merged is None else merged.merge(decoded)
        assert merged is not None
        if self._lww:
            newest = merged.newest
            assert newest is not None
            versions: tuple[Versioned[Any], ...] = (newest,)
        else:
            versions = merged.versions
            live = [v for v in versions if v.value != TOMBSTONE]
            if len(live) > 1 and not isinstance(self.resolver, KeepSiblings):
                raw = [Versioned(v.value["v"], v.hlc, v.vv, v.origin) for v in live]
                resolution = self.resolver.resolve(SiblingSet(raw[:-1]), raw[-1])
                win = resolution.winner
                if resolution.siblings is None and win is not None:
                    versions = (Versioned({"v": win.value}, win.hlc, win.vv, win.origin),)
        live_versions = tuple(v for v in versions if v.value != TOMBSTONE)
        return ReadResult(live_versions, merged.context, tuple(records)), target, stale

    def _repair(
        self, group: bytes, member: bytes, target: Record, stale: list[str]
    ) -> list[asyncio.Task[bool]]:
        """Write ``target`` to the stale replicas; each task ends True once its replica
        holds the target or something newer (False if it failed)."""
        self.stats.read_repairs += len(stale)
        hlc, blob = target

        async def repair(name: str) -> bool:
            try:
                await self.call_node(
                    name, lambda node: self.apply_record(node, group, member, hlc, blob)
                )
            except MultistoreError:
                return False
            return True

        return [asyncio.ensure_future(repair(name)) for name in stale]

    async def _finish_repairs(
        self, group: bytes, repairs: list[tuple[int, list[asyncio.Task[bool]]]], need: int
    ) -> None:
        """Blocking read repair (Cassandra 4): a record that fewer than ``need`` of the
        replicas that answered hold waits for its repairs; the read fails, as
        indeterminate, unless they bring it to ``need`` replicas. Repairs of records
        already held by ``need`` replicas run on in the background."""
        waits: list[tuple[int, list[asyncio.Task[bool]]]] = []
        for holders, tasks in repairs:
            if holders >= need:
                for task in tasks:
                    self.track(task)
            else:
                waits.append((holders, tasks))
        if not waits:
            return
        await asyncio.gather(*(task for _, tasks in waits for task in tasks))
        for holders, tasks in waits:
            held = holders + sum(task.result() for task in tasks)
            if held < need:
                raise QuorumError(
                    f"read of {group!r} found a newer version on {holders} of the {need} "
                    f"replicas it needs and repaired only {held - holders} more; the repair "
                    "may still apply",
                    acks=(),
                    required=need,
                    outcome=Outcome.INDETERMINATE,
                )

    # -- hinted handoff -----------------------------------------------------------------

    async def deliver_hints(self) -> int:
        """Hand pending hints to home nodes that answer; drop those past the window.

        Returns the number delivered (see :mod:`._handoff`).
        """
        self._check_open()
        return await deliver_hints(self)


async def _construct(
    cls: type[QuorumCluster],
    nodes: Sequence[QuorumNode],
    hints: HintStore,
    options: dict[str, Any],
) -> QuorumCluster:
    """``cls(nodes, hints=hints, **options)``, closing what was opened if it refuses."""
    try:
        return cls(nodes, hints=hints, **options)
    except BaseException:
        for node in nodes:
            await node.close()
        await hints.close()
        raise


_LOGICAL: Final = 2**24
"""HLC counters per millisecond in a version-vector counter (MAX_COUNTER + 1)."""


def _counter(hlc: HLCTimestamp) -> int:
    """The version-vector counter of a write stamped ``hlc``."""
    return hlc.physical_ms * _LOGICAL + hlc.counter + 1


def _stamp_of(counter: int, node: str) -> HLCTimestamp:
    """The HLC stamp a version-vector counter encodes (an upper bound on the stamp of
    every version it covers)."""
    physical, logical = divmod(counter - 1, _LOGICAL)
    if physical > MAX_PHYSICAL_MS:
        raise InvalidValueError(
            f"context counter {counter} is not one a quorum write made (too large)"
        )
    return HLCTimestamp(physical, logical, node)


def _on_new_ring(heard: NewReplicas | None) -> str:
    """How many of a write's replicas on the pending ring hold it, for an error."""
    if heard is None:
        return ""
    return f", and {len(heard.acked)} of those on the ring a membership change moves to"


def _rotate(names: list[str], _random: Callable[[], float] = random.random) -> list[str]:
    """``names`` from a random one on: each is a read's first stop equally often."""
    start = int(_random() * len(names))
    return names[start:] + names[:start]


def _answers(fan: Fanout) -> dict[str, Any]:
    """The answers of a read fan-out that say something: a fallback that holds nothing
    of the key is no replica of it (and gets no repair)."""
    stand_in = fan.stand_in
    if not stand_in:
        return fan.results
    return {name: got for name, got in fan.results.items() if got or name not in stand_in}


def _consume(task: asyncio.Future[Any]) -> None:
    """Mark a background task's exception as retrieved (it was counted already)."""
    if not task.cancelled():
        task.exception()


def _group(key: str | bytes) -> bytes:
    if isinstance(key, bytes) and key:
        return key
    if not isinstance(key, str) or not key:
        raise InvalidValueError(f"a quorum key must be a non-empty string, got {key!r}")
    return key.encode("utf-8")


def _check_tunables(
    timeout: float,
    speculative_after: float | None,
    hint_window: float,
    failure_threshold: int,
    probe_after: float,
) -> None:
    """Refuse settings no cluster can work with (a timeout of 0 would fail every write
    as indeterminate after sending it). ``hint_window`` may be infinite (hints kept
    until delivered)."""
    seconds = {"timeout": timeout, "hint_window": hint_window, "probe_after": probe_after}
    if speculative_after is not None:
        seconds["speculative_after"] = speculative_after
    for name, value in seconds.items():
        if (
            type(value) not in (int, float)
            or math.isnan(value)
            or value < 0
            or (name != "hint_window" and math.isinf(value))
        ):
            raise InvalidValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
    if timeout == 0:
        raise InvalidValueError("timeout must be more than 0 seconds, got 0")
    if type(failure_threshold) is not int or failure_threshold < 1:
        raise InvalidValueError(f"failure_threshold must be an int >= 1, got {failure_threshold!r}")


def _warn_if_weak(config: QuorumConfig) -> None:
    message = config.warning()
    if message is not None:
        warnings.warn(message, WeakQuorumWarning, stacklevel=3)


async def quorum_status(cluster: QuorumCluster) -> dict[str, Any]:
    """The membership view and counters of a cluster, as JSON-ready data."""
    stats = cluster.stats
    pending = await cluster.hints.counts()
    return {
        "n": cluster.config.n,
        "r": cluster.config.read_count,
        "w": cluster.config.write_count,
        "overlapping": cluster.config.overlapping,
        "sloppy": cluster.config.sloppy,
        "coordinator": cluster.node_id,
        "actor": cluster.actor,
        "read_from": cluster.read_from,
        "resolver": repr(cluster.resolver),
        "nodes": cluster.detector.view(),
        "hints": {
            "pending": sum(pending.values()),
            "pending_by_node": pending,
            "recorded": stats.hints_recorded,
            "delivered": stats.hints_delivered,
            "dropped": stats.hints_dropped,
        },
        "reads": stats.reads,
        "writes": stats.writes,
        "read_repairs": stats.read_repairs,
        "speculative_retries": stats.speculative_retries,
        "sloppy_writes": stats.sloppy_writes,
        "anti_entropy": dict(stats.anti_entropy),
    }
