"""Worker leases on etcd for outbox relays and saga workers.

Without etcd, a relay or a saga worker owns what it claimed by a lease written in its
own database (``owner``, ``lease_until``): another worker takes a claim over once that
lease has run out on the database's clock. With :class:`EtcdLeases` each worker also
holds an etcd lease that a background task keeps alive, and the claims are only worth
as much as that lease:

- A worker registers under ``{prefix}leases/{group}/live/{owner}`` (attached to its
  etcd lease, so etcd removes it when nobody renews it) and
  ``{prefix}leases/{group}/seen/{owner}`` (kept). ``owner`` is the worker id and the
  lease id (``relay-1@694d7b…``): every new lease is a new owner, so the database's
  owner fence tells one term of a worker from the next.
- Other workers of the group look for owners that were seen and are no longer live
  (:meth:`EtcdLeases.dead`): etcd let their lease run out on its own clock, so their
  process died, was cut off or stood still for longer than ``ttl``. They expire those
  owners' claims in the database at once, whatever the database lease says, and take
  them over.
- The holder knows when its lease runs out at the latest: ``ttl`` seconds after it
  *sent* the keepalive that etcd answered (etcd counts from when it received it, which
  is later). :meth:`LeaseTerm.valid` compares that with the local monotonic clock,
  and the relay checks it before it hands an event over, the saga engine before each
  log write and each step; so a holder that was paused (``SIGSTOP``, a long GC, a
  frozen VM) past its lease notices as soon as it runs again, before it acts, and
  gives the term up. A write it had in flight is fenced by the database on the owner.

What no lease can fence: a pause between that check and the effect of the call it
guards (inside the handler or the step). The destination sees the owner
(:attr:`LeaseTerm.owner`, with a lease id that only grows) if it wants to refuse
stragglers itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from multistore._aio import stop_task
from multistore._etcd import EtcdClient, EtcdError, store_call
from multistore.errors import StoreUnavailableError, UsageError
from multistore.urls import StoreURL, parse_url

__all__ = ["DEFAULT_ETCD_TTL", "EtcdLeases", "LeaseTerm", "WorkerLease", "lease_group"]

DEFAULT_ETCD_TTL = 10.0
"""Seconds an etcd worker lease lives without a keepalive (whole seconds on etcd)."""

T = TypeVar("T")


def lease_group(kind: str, url: StoreURL, *parts: str) -> str:
    """The group of the workers of one ``kind`` (``outbox``, ``sagas``) on one
    database: ``kind``, ``parts`` (a table) and a digest of the database's hosts and
    name, so that workers on other databases under the same prefix never expire
    claims that are not in theirs. (The same database named by other host names is
    another group: its dead workers' claims then wait for the database lease.)"""
    hosts = ",".join(f"{h}:{p}" for h, p in url.hosts) or url.host or ""
    where = f"{url.scheme}://{hosts}/{url.database or ''}"
    return "/".join([kind, *parts, hashlib.sha256(where.encode()).hexdigest()[:16]])


class EtcdLeases:
    """Where workers keep their leases: an etcd cluster (``etcd://h1:2379,h2:2379``;
    ``?prefix=/shop/`` puts the keys under a prefix, ``?ttl=`` sets the lease, default
    :data:`DEFAULT_ETCD_TTL`, ``?timeout=`` each call, 5 s). Give it to
    :class:`~multistore.consistency.OutboxRelay` and
    :class:`~multistore.consistency.SagaEngine` as ``leases=``."""

    def __init__(
        self,
        url: str | StoreURL,
        *,
        ttl: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parsed = parse_url(url) if isinstance(url, str) else url
        if parsed.scheme != "etcd":
            raise UsageError(f"worker leases need an etcd:// URL, not {parsed.scheme}://")
        self.url = parsed
        self.ttl = parsed.float_option("ttl", DEFAULT_ETCD_TTL) if ttl is None else ttl
        if not self.ttl >= 1:
            raise UsageError(f"an etcd lease needs ttl >= 1 second, not {self.ttl}")
        self.prefix = parsed.str_option("prefix", "/multistore/")
        self.client = EtcdClient(
            [f"{h}:{p}" for h, p in parsed.hosts], timeout=parsed.float_option("timeout", 5.0)
        )
        self._clock = clock

    def _keys(self, group: str) -> tuple[str, str]:
        base = f"{self.prefix}leases/{group}/"
        return base + "live/", base + "seen/"

    async def _run(self, op: str, call: Awaitable[T]) -> T:
        return await store_call(f"etcd worker leases {self.url.render()}: {op}", call)

    async def hold(self, group: str, worker_id: str) -> LeaseTerm:
        """Take a new lease for ``worker_id`` in ``group`` and keep it alive in the
        background until the term is closed or etcd says it ran out."""
        sent = self._clock()
        lease = await self._run("grant", self.client.grant(math.ceil(self.ttl)))
        owner = f"{worker_id}@{lease:x}"
        live, seen = self._keys(group)
        try:
            # Live first: an owner seen without its live key is dead, never one that
            # is still registering.
            await self._run("register", self.client.put(live + owner, worker_id, lease=lease))
            await self._run("register", self.client.put(seen + owner, worker_id))
        except BaseException:
            with contextlib.suppress(StoreUnavailableError):
                await self._run("revoke", self.client.revoke(lease))
            raise
        term = LeaseTerm(self, group, owner, lease, sent + math.ceil(self.ttl))
        term.start()
        return term

    async def dead(self, group: str) -> list[str]:
        """The owners of ``group`` whose lease etcd let run out (and that nobody has
        :meth:`forget` yet)."""
        live, seen = self._keys(group)
        # Seen first: an owner registered after this read is not in it at all.
        known = await self._run("dead", self.client.get_prefix(seen))
        alive = await self._run("dead", self.client.get_prefix(live))
        names = {v.key.decode()[len(live) :] for v in alive}
        return [o for o in (v.key.decode()[len(seen) :] for v in known) if o not in names]

    async def forget(self, group: str, owner: str) -> None:
        """Drop a dead owner (its claims have been expired)."""
        await self._run("forget", self.client.delete(self._keys(group)[1] + owner))


class LeaseTerm:
    """One etcd lease of one worker: its :attr:`owner` name in the claims, kept alive
    every ``ttl / 3`` seconds until :meth:`close` or until it is lost."""

    def __init__(
        self, leases: EtcdLeases, group: str, owner: str, lease: int, deadline: float
    ) -> None:
        self.leases = leases
        self.group = group
        self.owner = owner
        self.lease = lease
        self.deadline = deadline
        """The local monotonic time by which etcd has let the lease go at the latest."""
        self.lost = False
        """etcd answered that the lease is gone."""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._keep())

    def valid(self) -> bool:
        """The lease still lives: etcd has not said otherwise and its time has not
        run out on the local clock."""
        return not self.lost and self.leases._clock() < self.deadline

    async def _keep(self) -> None:
        leases = self.leases
        while self.valid():
            await asyncio.sleep(leases.ttl / 3)
            sent = leases._clock()
            try:
                left = await leases.client.keep_alive(self.lease)
            except EtcdError:
                continue  # the lease runs on; valid() ends it if this lasts
            if left <= 0:
                self.lost = True
                return
            if self.valid():  # never revive a term that already ran out here
                self.deadline = sent + left

    async def close(self) -> None:
        """Stop the keepalive and give the lease up at once (best effort: otherwise
        it runs out), also one that ran out here only: nothing acts on it any more, so
        the others may take its claims over without waiting for etcd's clock."""
        task, self._task = self._task, None
        if task is not None:
            await stop_task(task, 5.0)
        gone = self.lost  # etcd said so
        self.lost = True
        if not gone:
            with contextlib.suppress(StoreUnavailableError):
                await self.leases._run("revoke", self.leases.client.revoke(self.lease))

    def __repr__(self) -> str:
        state = "valid" if self.valid() else "over"
        return f"<LeaseTerm {self.group}/{self.owner} {state}>"


class WorkerLease:
    """The etcd side of one relay or saga engine (``group``: what it works on): its
    current term, a new term when the last ran out, and the sweep that expires, by
    ``expire(owner)``, the claims of the group's owners whose lease etcd let go."""

    def __init__(
        self,
        leases: EtcdLeases,
        group: str,
        worker_id: str,
        expire: Callable[[str], Awaitable[object]],
    ) -> None:
        self.leases = leases
        self.group = group
        self.worker_id = worker_id
        self.term: LeaseTerm | None = None
        self.terms = 0
        """Terms taken."""
        self.taken_over = 0
        """Dead owners whose claims were expired here."""
        self._expire = expire
        self._next_sweep = 0.0

    @property
    def owner(self) -> str:
        return self.worker_id if self.term is None else self.term.owner

    def valid(self) -> bool:
        return self.term is not None and self.term.valid()

    async def ensure(self) -> bool:
        """A live term (a new one, a new owner, if the last ran out; True then), and,
        at most every third of the ttl, the sweep of dead owners."""
        new = not self.valid()
        if new:
            await self.close()
            self.term = await self.leases.hold(self.group, self.worker_id)
            self.terms += 1
            self._next_sweep = 0.0
        now = self.leases._clock()
        if now >= self._next_sweep:
            for owner in await self.leases.dead(self.group):
                await self._expire(owner)
                await self.leases.forget(self.group, owner)
                self.taken_over += 1
            self._next_sweep = now + self.leases.ttl / 3
        return new

    async def close(self) -> None:
        term, self.term = self.term, None
        if term is not None:
            await term.close()
