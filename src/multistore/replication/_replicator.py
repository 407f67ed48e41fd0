"""The replicator: exchanges change-log batches between every pair of multi-master nodes.

Three messages travel, each a JSON text:

* ``batch`` — ``{"type": "batch", "after": p, "upto": q, "changes": [...]}``: the
  sender's log from after position ``p`` up to ``q``. Sent as a **push** (after
  the position the recipient last acknowledged) and as the answer to a pull.
* ``pull`` — ``{"type": "pull", "after": p}``: "send me your log after ``p``",
  where ``p`` is the position the puller has applied contiguously (persisted, so
  a restarted node resumes there).
* ``ack`` — ``{"type": "ack", "pos": p}``: the recipient applied the sender's
  log up to ``p``; the sender's next push starts there.

Nothing here assumes a reliable network: a batch may arrive late, twice, out of
order or never. Re-delivered changes are skipped by ``(origin, seq)``; a batch
that arrives ahead of a lost one is applied but does not move the position, so
the gap is pulled again. :meth:`Replicator.round` sends and delivers one round of
messages; :meth:`Replicator.sync` runs rounds until every node has applied every
other node's log.

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

from multistore.errors import InvalidValueError, StoreTimeoutError, UsageError
from multistore.replication._changelog import Change, dumps
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
    """Messages that could not be decoded or applied (dropped; the change is pulled again)."""


class Replicator:
    """Exchanges changes between every pair of ``nodes`` over ``transport``.

    ``push`` sends each peer the log after its last acknowledgement; ``pull``
    asks each peer for its log after this node's applied position. Both are on
    by default; either alone converges. A push or pull is not repeated while it
    may still be answered: only when the positions moved or after
    ``resend_after`` rounds without an answer.
    """

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
        self.nodes = list(nodes)
        self._by_id = {node.node_id: node for node in self.nodes}
        self.transport: Transport = transport if transport is not None else MemoryTransport()
        self.batch_size = batch_size
        self.push = push
        self.pull = pull
        if type(resend_after) is not int or resend_after < 1:
            raise InvalidValueError(f"resend_after must be an int >= 1, got {resend_after!r}")
        self.resend_after = resend_after
        self._outstanding: dict[tuple[str, str, str], tuple[int, object]] = {}
        self._rounds = 0
        self._sent = 0
        self._batches = 0
        self._malformed = 0

    def statistics(self) -> ReplicatorStatistics:
        return ReplicatorStatistics(self._rounds, self._sent, self._batches, self._malformed)

    def caught_up(self) -> bool:
        """True when every node has applied every other node's whole log."""
        return all(
            b.position(a.node_id).pulled >= a.head
            for a in self.nodes
            for b in self.nodes
            if a is not b
        )

    async def round(self) -> None:
        """Send pushes and pulls between every pair, then deliver what the network lets through."""
        self._rounds += 1
        for a in self.nodes:
            for b in self.nodes:
                if a is b:
                    continue
                position = a.position(b.node_id)
                if self.push and position.acked < a.head and self._due(a, b, "push", a.head):
                    await self._send_batch(a, b.node_id, position.acked)
                if self.pull and position.pulled < b.head and self._due(a, b, "pull", position):
                    self._send(a.node_id, b.node_id, {"type": "pull", "after": position.pulled})
        for envelope in self.transport.deliver():
            await self._handle(envelope)

    async def sync(self, max_rounds: int = 200) -> int:
        """Run rounds until :meth:`caught_up`; return how many it took.

        :class:`StoreTimeoutError` when ``max_rounds`` were not enough (a partition
        that never heals, or a network that drops everything).
        """
        for done in range(max_rounds + 1):
            if self.caught_up():
                return done
            await self.round()
        raise StoreTimeoutError(
            f"nodes did not catch up within {max_rounds} replication rounds: "
            + ", ".join(
                f"{b.node_id} has {b.position(a.node_id).pulled}/{a.head} of {a.node_id}"
                for a in self.nodes
                for b in self.nodes
                if a is not b and b.position(a.node_id).pulled < a.head
            )
        )

    def _due(self, a: MultiMasterNode, b: MultiMasterNode, kind: str, state: object) -> bool:
        """Send again only when something changed or the last one went unanswered for
        ``resend_after`` rounds (it, or its answer, may have been lost)."""
        key = (a.node_id, b.node_id, kind)
        last = self._outstanding.get(key)
        if last is not None and last[1] == state and self._rounds - last[0] < self.resend_after:
            return False
        self._outstanding[key] = (self._rounds, state)
        return True

    def _send(self, sender: str, recipient: str, message: dict[str, Any]) -> None:
        self._sent += 1
        self.transport.send(Envelope(sender, recipient, dumps(message)))

    async def _send_batch(self, node: MultiMasterNode, recipient: str, after: int) -> None:
        changes, upto = await node.changes_after(after, self.batch_size)
        message = {
            "type": "batch",
            "after": after,
            "upto": upto,
            "changes": [change.to_dict() for change in changes],
        }
        self._send(node.node_id, recipient, message)

    async def _handle(self, envelope: Envelope) -> None:
        node = self._by_id.get(envelope.recipient)
        if node is None or envelope.sender not in self._by_id:
            return  # a node that left the group: drop
        try:
            message = json.loads(envelope.payload)
            kind = message["type"]
            if kind == "pull":
                await self._send_batch(node, envelope.sender, _position(message["after"]))
            elif kind == "ack":
                await node.record_ack(envelope.sender, _position(message["pos"]))
            elif kind == "batch":
                changes = [Change.from_dict(item) for item in message["changes"]]
                pulled = await node.apply_batch(
                    envelope.sender,
                    _position(message["after"]),
                    _position(message["upto"]),
                    changes,
                )
                self._batches += 1
                self._send(node.node_id, envelope.sender, {"type": "ack", "pos": pulled})
            else:
                raise InvalidValueError(f"unknown message type {kind!r}")
        except (ValueError, KeyError, TypeError, InvalidValueError):
            self._malformed += 1


def _position(value: object) -> int:
    if type(value) is not int or value < 0:
        raise InvalidValueError(f"a log position must be an int >= 0, got {value!r}")
    return value
