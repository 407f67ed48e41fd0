"""The network between one coordinator and one quorum node, as the lab shapes it.

A :class:`Link` is a :class:`~multistore.replication.QuorumNode` that wraps the real
node (an embedded SQLite node or a Redis server's client) and is what the lab hands to
a coordinator. Every call is a request message and a reply message:

1. the request leg: a delay drawn from the link's latency distribution (plus a fixed
   extra delay while the ``latency`` fault is on); a request in flight arrives even if
   the coordinator stops waiting for it (it is not cancelled with the caller);
2. the node applies the call;
3. the reply leg: another delay drawn from the distribution;
4. the reply reaches the coordinator, unless it is lost.

Faults change a link's state:

- ``refused`` (the node is down: ``kill`` on embedded nodes): calls fail at once with
  :class:`~multistore.errors.StoreUnavailableError`, definite — nothing was sent;
- ``cut`` (a ``partition``): requests and replies are lost; the caller hears nothing
  and gives up at its own timeout (a request already in flight when the cut starts
  still arrives, its reply does not);
- ``lose_replies`` (the ``lost-replies`` fault): requests arrive and are applied,
  replies are lost, so the caller times out on work that was done.

A lost message never answers: the call waits ``hang`` seconds (longer than the
coordinator's timeout, which fires first) and then fails with
:class:`~multistore.errors.StoreTimeoutError`, indeterminate.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from multistore.errors import Outcome, StoreTimeoutError, StoreUnavailableError
from multistore.lab._latency import Latency
from multistore.replication import QuorumNode

__all__ = ["Link", "LinkCounts"]

T = TypeVar("T")
Record = tuple[str, bytes]


@dataclass(slots=True)
class LinkCounts:
    """What went through one link."""

    requests: int = 0
    applied: int = 0
    refused: int = 0
    requests_lost: int = 0
    replies_lost: int = 0


class Link(QuorumNode):
    """One coordinator's connection to one node; see the module docstring."""

    def __init__(
        self,
        node: QuorumNode,
        *,
        latency: Latency | None = None,
        rng: random.Random | None = None,
        hang: float = 5.0,
    ) -> None:
        self.node = node
        self.name = node.name
        self.deadline = None  # the coordinator's own timeout applies
        self.latency = latency
        self.rng = rng if rng is not None else random.Random()
        self.hang = hang
        self.extra_delay = 0.0
        self.refused = False
        self.cut = False
        self.lose_replies = False
        self.counts = LinkCounts()
        self._in_flight: set[asyncio.Future[Any]] = set()

    # -- the two legs ----------------------------------------------------------------------

    def _quiet(self) -> bool:
        return self.latency is None and not (
            self.extra_delay or self.refused or self.cut or self.lose_replies or self._in_flight
        )

    async def _leg(self, extra: float = 0.0) -> None:
        delay = extra + (self.latency.sample(self.rng) if self.latency is not None else 0.0)
        if delay > 0:
            await asyncio.sleep(delay)

    async def _lost(self, what: str, op: str) -> None:
        await asyncio.sleep(self.hang)
        raise StoreTimeoutError(f"quorum node {self.name}: the {what} of {op} was lost")

    def _refuse(self, op: str) -> None:
        self.counts.refused += 1
        raise StoreUnavailableError(
            f"quorum node {self.name} is down ({op})", outcome=Outcome.DEFINITE
        )

    async def _deliver(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        await self._leg(self.extra_delay)
        if self.cut:
            self.counts.requests_lost += 1
            await self._lost("request", op)
        if self.refused:
            self._refuse(op)
        result = await call()
        self.counts.applied += 1
        return result

    async def _through(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        self.counts.requests += 1
        if self._quiet():
            result = await call()
            self.counts.applied += 1
            return result
        if self.refused:
            self._refuse(op)
        delivery = asyncio.ensure_future(self._deliver(op, call))
        self._in_flight.add(delivery)
        delivery.add_done_callback(self._landed)
        result = await asyncio.shield(delivery)
        await self._leg()
        if self.cut or self.lose_replies:
            self.counts.replies_lost += 1
            await self._lost("reply", op)
        return result

    def _landed(self, delivery: asyncio.Future[Any]) -> None:
        self._in_flight.discard(delivery)
        if not delivery.cancelled():
            delivery.exception()  # retrieved: the caller may have stopped waiting

    # -- QuorumNode -------------------------------------------------------------------------

    async def ping(self) -> None:
        await self._through("ping", self.node.ping)

    async def read(self, group: bytes, member: bytes = b"") -> Record | None:
        return await self._through("read", lambda: self.node.read(group, member))

    async def write_lww(self, group: bytes, member: bytes, hlc: str, blob: bytes) -> bool:
        return await self._through("write", lambda: self.node.write_lww(group, member, hlc, blob))

    async def write_cas(
        self, group: bytes, member: bytes, hlc: str, blob: bytes, expected: Record | None
    ) -> bool:
        return await self._through(
            "write", lambda: self.node.write_cas(group, member, hlc, blob, expected)
        )

    async def scan(
        self,
        group: bytes,
        lo: bytes | None,
        hi: bytes | None,
        *,
        reverse: bool = False,
        limit: int | None = None,
    ) -> list[tuple[bytes, Record]]:
        return await self._through(
            "scan", lambda: self.node.scan(group, lo, hi, reverse=reverse, limit=limit)
        )

    async def remove(
        self, group: bytes, member: bytes = b"", *, expected: Record | None = None
    ) -> bool:
        return await self._through(
            "remove", lambda: self.node.remove(group, member, expected=expected)
        )

    async def leaf_hashes(self, arcs: Sequence[tuple[int, int]], depth: int) -> dict[int, str]:
        return await self._through("merkle leaves", lambda: self.node.leaf_hashes(arcs, depth))

    async def entries(self, lo: int, hi: int) -> list[tuple[str, str]]:
        return await self._through("merkle entries", lambda: self.node.entries(lo, hi))

    async def wipe(self) -> None:
        await self._through("wipe", self.node.wipe)

    async def close(self) -> None:
        """Drop the messages still in flight, then close the node's connection."""
        in_flight = list(self._in_flight)
        for delivery in in_flight:
            delivery.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
        await self.node.close()

    def __repr__(self) -> str:
        return f"Link({self.node!r})"
