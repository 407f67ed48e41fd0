"""The replicator: moves changes between multi-master nodes, each change to each peer once.

Every message is a JSON text and carries ``have``: the sender's version vector
of origin sequence numbers (what it has taken of each origin), which the
recipient records — that is how each node learns what its peers have, and so
what it may trim from its log and need not send.

* ``batch`` — ``{"type": "batch", "have": {...}, "changes": [...]}``: changes
  the recipient lacks, each origin's in sequence order;
* ``pull`` — ``{"type": "pull", "have": {...}}``: "send me what I lack"; the
  answer is a batch of changes of any origin (relayed ones included);
* ``ack`` — ``{"type": "ack", "have": {...}}``: the answer to a batch, and a
  node's news to a peer when what it has changed and nothing else went there in
  the round (so peers can trim their logs once replication is quiet).

**Who sends what.** Each node *pushes* its own changes to every peer, after
what the peer last acknowledged of them; a push still in flight is not repeated
until ``resend_after`` rounds passed without an acknowledgement. A node *pulls*
from a peer only what it cannot expect directly: another origin's changes that
the peer has and it has been missing for ``resend_after`` rounds (the origin is
cut off from it, or its pushes were lost) — so a change normally travels once
per peer, from its origin, and relaying through a third node is the fallback
that makes a partitioned pair converge. With ``push=False`` nodes pull
everything, from the origin while it answers.

Nothing here assumes a reliable network: a message may arrive late, twice, out
of order or never. A node takes each origin's changes in sequence order,
skipping what it has and what arrives ahead of a gap (it is sent again).
:meth:`Replicator.round` sends and delivers one round of messages;
:meth:`Replicator.sync` runs rounds until every node has taken and applied
every change (:meth:`Replicator.caught_up`).

The replicator decides *when* to send from its view of all the nodes it drives
(one process); *what* a node sends and applies depends only on the messages.
The transport is a seam: :class:`MemoryTransport` is an in-process queue whose
:class:`Faults` delay, duplicate, reorder and drop messages and cut links
(partitions), driven by a seeded random generator so a failing run repeats.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from multistore.core import VersionVector
from multistore.errors import InvalidValueError, StoreTimeoutError, UsageError
from multistore.replication._changelog import decode_vv, dumps
from multistore.replication._multimaster import MultiMasterNode

__all__ = [
    "Envelope",
    "Faults",
    "MemoryTransport",
    "Replicator",
    "ReplicatorStatistics",
    "Transport",
]


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message in flight: ``payload`` (JSON text) from ``sender`` to ``recipient``."""

    sender: str
    recipient: str
    payload: str


class Transport(Protocol):
    """Carries envelopes between nodes; :meth:`deliver` returns those due this round."""

    def send(self, envelope: Envelope) -> None: ...

    def deliver(self) -> list[Envelope]: ...


@dataclass(frozen=True, slots=True)
class Faults:
    """What the in-memory network does to each message (probabilities per message)."""

    drop: float = 0.0
    duplicate: float = 0.0
    """Probability that a message is delivered twice (each copy delayed on its own)."""
    max_delay: int = 0
    """Each copy is held back 0..max_delay rounds, at random."""
    reorder: bool = False
    """Shuffle the messages due in a round."""

    def __post_init__(self) -> None:
        for name in ("drop", "duplicate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InvalidValueError(f"Faults.{name} must be in [0, 1], got {value!r}")
        if type(self.max_delay) is not int or self.max_delay < 0:
            raise InvalidValueError(f"Faults.max_delay must be an int >= 0, got {self.max_delay!r}")


class MemoryTransport:
    """An in-process network with fault injection and partitions (see :class:`Faults`)."""

    def __init__(
        self, faults: Faults | None = None, *, seed: int = 0, record: bool = False
    ) -> None:
        self.faults = faults or Faults()
        self._rng = random.Random(seed)
        self._round = 0
        self._queue: list[tuple[int, int, Envelope]] = []
        self._serial = 0
        self._groups: list[frozenset[str]] | None = None
        self.record = record
        self.sent: list[Envelope] = []
        """Every envelope sent, when ``record`` is true (for tests)."""
        self.dropped = 0
        self.duplicated = 0
        self.delivered = 0

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut every link between nodes of different groups (unlisted nodes are cut off
        from everyone); messages in flight across a cut are lost too."""
        self._groups = [frozenset(group) for group in groups]

    def heal(self) -> None:
        self._groups = None

    def connected(self, a: str, b: str) -> bool:
        if self._groups is None:
            return True
        return any(a in group and b in group for group in self._groups)

    def send(self, envelope: Envelope) -> None:
        if self.record:
            self.sent.append(envelope)
        faults, rng = self.faults, self._rng
        if not self.connected(envelope.sender, envelope.recipient) or rng.random() < faults.drop:
            self.dropped += 1
            return
        copies = 1
        if faults.duplicate and rng.random() < faults.duplicate:
            copies, self.duplicated = 2, self.duplicated + 1
        for _ in range(copies):
            self._serial += 1
            due = self._round + 1 + rng.randint(0, faults.max_delay)
            self._queue.append((due, self._serial, envelope))

    def deliver(self) -> list[Envelope]:
        self._round += 1
        due = sorted(item for item in self._queue if item[0] <= self._round)
        self._queue = [item for item in self._queue if item[0] > self._round]
        ready = []
        for _, _, envelope in due:
            if self.connected(envelope.sender, envelope.recipient):
                ready.append(envelope)
            else:
                self.dropped += 1
        if self.faults.reorder:
            self._rng.shuffle(ready)
        self.delivered += len(ready)
        return ready

    @property
    def in_flight(self) -> int:
        return len(self._queue)


@dataclass(frozen=True, slots=True)
class ReplicatorStatistics:
    rounds: int
    messages_sent: int
    batches_applied: int
    malformed: int
    """Messages that could not be decoded (dropped; what they carried is sent again)."""
    changes_sent: int = 0
    """Changes carried by the batches sent (a change sent to two peers counts twice)."""


class Replicator:
    """Moves changes between every pair of ``nodes`` over ``transport``; see the module
    docstring for who sends what."""

    def __init__(
        self,
        nodes: Sequence[MultiMasterNode],
        transport: Transport | None = None,
        *,
        batch_size: int = 200,
        push: bool = True,
        pull: bool = True,
        resend_after: int = 4,
    ) -> None:
        ids = [node.node_id for node in nodes]
        if len(set(ids)) != len(ids):
            raise UsageError(f"node ids must be unique, got {ids}")
        if not (push or pull):
            raise UsageError("a replicator must push, pull or both")
        if type(batch_size) is not int or batch_size < 1:
            raise InvalidValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if type(resend_after) is not int or resend_after < 1:
            raise InvalidValueError(f"resend_after must be an int >= 1, got {resend_after!r}")
        self.nodes = list(nodes)
        self._by_id = {node.node_id: node for node in self.nodes}
        self.transport: Transport = transport if transport is not None else MemoryTransport()
        self.batch_size = batch_size
        self.push = push
        self.pull = pull
        self.resend_after = resend_after
        self._registered = False
        self._pushed: dict[tuple[str, str], tuple[int, int]] = {}
        """(sender, recipient) -> (last own seq sent, round sent): a push in flight."""
        self._pulled: dict[tuple[str, str], int] = {}
        """(puller, peer) -> round of the last pull sent."""
        self._progress: dict[tuple[str, str], tuple[int, int]] = {}
        """(node, origin) -> (what the node had of origin, round it last changed)."""
        self._told: dict[tuple[str, str], VersionVector] = {}
        """(sender, recipient) -> the ``have`` of the last message sent."""
        self._rounds = 0
        self._sent = 0
        self._changes_sent = 0
        self._batches = 0
        self._malformed = 0

    def statistics(self) -> ReplicatorStatistics:
        return ReplicatorStatistics(
            self._rounds, self._sent, self._batches, self._malformed, self._changes_sent
        )

    def caught_up(self) -> bool:
        """True when every node has taken every other node's changes and applied them all
        (none held back by the skew guard)."""
        return all(node.pending_count == 0 for node in self.nodes) and all(
            b.received_from(a.node_id) >= a.seq for a in self.nodes for b in self.nodes
        )

    async def round(self) -> None:
        """Retry held-back changes, send pushes and pulls, then deliver what the network
        lets through."""
        self._rounds += 1
        if not self._registered:
            for a in self.nodes:
                for b in self.nodes:
                    if a is not b:
                        await a.add_peer(b.node_id)
            self._registered = True
        for node in self.nodes:
            if node.pending_count:
                await node.retry_pending()
        self._note_progress()
        for a in self.nodes:
            for b in self.nodes:
                if a is not b and self.push:
                    await self._push(a, b)
            if self.pull:
                self._pulls(a)
        for a in self.nodes:  # tell peers what changed, so that they can trim their logs
            have = a.received
            for b in self.nodes:
                if a is not b and self._told.get((a.node_id, b.node_id)) != have:
                    self._send(a.node_id, b.node_id, {"type": "ack", "have": have.to_dict()})
        for envelope in self.transport.deliver():
            await self._handle(envelope)

    async def sync(self, max_rounds: int = 200) -> int:
        """Run rounds until :meth:`caught_up`; return how many it took.

        :class:`StoreTimeoutError` when ``max_rounds`` were not enough (a partition
        that never heals, a network that drops everything, or a change the skew
        guard keeps holding back).
        """
        for done in range(max_rounds + 1):
            if self.caught_up():
                return done
            await self.round()
        behind = [
            f"{b.node_id} has {a.node_id}:{b.received_from(a.node_id)}/{a.seq}"
            for a in self.nodes
            for b in self.nodes
            if b.received_from(a.node_id) < a.seq
        ]
        held = [
            f"{node.node_id} holds back {node.pending_count} (skew guard)"
            for node in self.nodes
            if node.pending_count
        ]
        raise StoreTimeoutError(
            f"nodes did not catch up within {max_rounds} replication rounds: "
            + ", ".join(behind + held)
        )

    def _note_progress(self) -> None:
        for node in self.nodes:
            for origin in self.nodes:
                key = (node.node_id, origin.node_id)
                have = node.received_from(origin.node_id)
                last = self._progress.get(key)
                if last is None or last[0] != have:
                    self._progress[key] = (have, self._rounds)

    def _stalled(self, node: MultiMasterNode, origin: str) -> bool:
        since = self._progress.get((node.node_id, origin), (0, self._rounds))[1]
        return self._rounds - since >= self.resend_after

    async def _push(self, a: MultiMasterNode, b: MultiMasterNode) -> None:
        """Send ``b`` the next of ``a``'s own changes that ``b`` has not acknowledged and
        that are not in flight (or were in flight too long)."""
        acked = a.peer_has(b.node_id).get_count(a.node_id)
        start = acked
        flight = self._pushed.get((a.node_id, b.node_id))
        if (
            flight is not None
            and flight[0] > acked
            and self._rounds - flight[1] < self.resend_after
        ):
            start = flight[0]
        if a.seq <= start:
            return
        changes = await a.changes_for(
            VersionVector({a.node_id: start}), self.batch_size, origins=[a.node_id]
        )
        if changes:
            self._pushed[(a.node_id, b.node_id)] = (changes[-1]["seq"], self._rounds)
            self._send_batch(a, b.node_id, changes)

    def _pulls(self, a: MultiMasterNode) -> None:
        """Pull from peers what ``a`` has been missing: relays after a stall; with pushes
        off, from the origin at once."""
        targets: set[str] = set()
        for origin in self.nodes:
            if origin is a:
                continue
            mine = a.received_from(origin.node_id)
            holders = [
                peer
                for peer in self.nodes
                if peer is not a and peer.received_from(origin.node_id) > mine
            ]
            if not holders:
                continue
            stalled = self._stalled(a, origin.node_id)
            if not self.push and not stalled and origin in holders:
                targets.add(origin.node_id)
            elif stalled:  # the origin is not getting through: rotate over the holders
                turn = (self._rounds // self.resend_after) % len(holders)
                targets.add(holders[turn].node_id)
        for peer in sorted(targets):
            last = self._pulled.get((a.node_id, peer))
            if last is not None and self._rounds - last < self.resend_after:
                continue
            self._pulled[(a.node_id, peer)] = self._rounds
            self._send(a.node_id, peer, {"type": "pull", "have": a.received.to_dict()})

    def _send(self, sender: str, recipient: str, message: dict[str, Any]) -> None:
        self._sent += 1
        self._told[(sender, recipient)] = decode_vv(message["have"])
        self.transport.send(Envelope(sender, recipient, dumps(message)))

    def _send_batch(
        self, node: MultiMasterNode, recipient: str, changes: list[dict[str, Any]]
    ) -> None:
        self._changes_sent += len(changes)
        message = {"type": "batch", "have": node.received.to_dict(), "changes": changes}
        self._send(node.node_id, recipient, message)

    async def _handle(self, envelope: Envelope) -> None:
        node = self._by_id.get(envelope.recipient)
        if node is None or envelope.sender not in self._by_id:
            return  # a node that left the group: drop
        try:
            message = json.loads(envelope.payload)
            kind = message["type"]
            have = decode_vv(message["have"])
            if kind == "pull":
                await node.record_peer(envelope.sender, have)
                changes = await node.changes_for(have, self.batch_size)
                if changes:
                    self._send_batch(node, envelope.sender, changes)
            elif kind == "ack":
                await node.record_peer(envelope.sender, have)
            elif kind == "batch":
                items = message["changes"]
                if not isinstance(items, list):
                    raise InvalidValueError(f"a batch's changes must be a list, got {items!r}")
                received = await node.apply_batch(envelope.sender, items, peer_has=have)
                self._batches += 1
                ack = {"type": "ack", "have": received.to_dict()}
                self._send(node.node_id, envelope.sender, ack)
            else:
                raise InvalidValueError(f"unknown message type {kind!r}")
        except (ValueError, KeyError, TypeError, InvalidValueError):
            self._malformed += 1
