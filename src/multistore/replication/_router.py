"""The primary/replica router: writes to the primary, reads spread over replicas.

Routing of one call:

- writes (``execute``, ``executemany``, ``execute_script``, a statement that is not
  a plain read) and ``transaction()`` go to the primary, and return a
  :class:`~multistore.replication.CausalToken`;
- ``strong=True`` reads, ``SELECT … FOR UPDATE``/``FOR SHARE`` and reads inside a
  transaction go to the primary;
- other reads go to a replica the :class:`ReadPolicy` picks among those in rotation;
  with ``token=`` only among replicas that replayed past it (waiting up to
  ``causal_wait`` seconds, polling with backoff), with ``max_staleness=`` only among
  replicas whose lag is provably below it; when none qualifies, the primary.

A token is checked before anything is sent: its signature (when the router has a
:class:`TokenSigner`), its timeline against the primary's history (``_timeline.py``:
past a fork it names a write that may have been lost in a failover), and its position
against the furthest the router knows the primary reached (one primary probe when it
is further, then refused).

A background task probes the primary's position and every replica's replay position
(the lag monitor, see ``_lag.py``); ``failover()`` is in ``_failover.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

from multistore.errors import (
    InvalidURLError,
    MultistoreError,
    Outcome,
    StoreTimeoutError,
    StoreUnavailableError,
    UnsupportedError,
    UsageError,
)
from multistore.replication._config import LogShipping, RouterConfig, bounded
from multistore.replication._errors import FailoverError, InvalidTokenError
from multistore.replication._lag import LagTracker
from multistore.replication._logship import LogShipper, SQLiteBackend
from multistore.replication._nodes import Backend, Node, Role, RoutedTransaction, is_read
from multistore.replication._policies import ReadPolicy, RoundRobinPolicy
from multistore.replication._session import Session
from multistore.replication._timeline import Timeline
from multistore.replication._token import CausalToken, TokenSigner
from multistore.stores import open_store
from multistore.stores.relational import Params, Queries, RelationalStore, Row
from multistore.urls import parse_url

__all__ = ["Router", "WriteResult"]

T = TypeVar("T")
_POLL_FIRST = 0.002
_POLL_CAP = 0.02


@dataclass(frozen=True)
class WriteResult:
    """What a write through the router returns: rows changed and its causal token."""

    rowcount: int
    token: CausalToken


class Router:
    """One primary and N replicas of a relational store (PostgreSQL or SQLite).

    Open with :meth:`open`; use as an async context manager or call :meth:`close`.
    """

    def __init__(
        self,
        backend: Backend,
        nodes: list[Node],
        policy: ReadPolicy,
        config: RouterConfig,
        signer: TokenSigner | None = None,
    ) -> None:
        self.backend = backend
        self.nodes = nodes
        self.policy = policy
        self.config = config
        self.signer = signer
        self.history = Timeline(1)
        """The primary's timeline and where its ancestors ended, read from the database
        at open and after each failover."""
        self.history_pending: str | None = None
        """Why the new primary's timeline could not be read after a promotion; while
        set, writes and token checks fail and each probe round tries again."""
        self.tracker = LagTracker()
        self.failing_over = False
        self.primary_failures = 0
        self.failover_lock = asyncio.Lock()
        self._monitor: asyncio.Task[None] | None = None
        self._sampling: asyncio.Future[None] | None = None
        self._closed = False

    # -- lifetime --

    @classmethod
    async def open(
        cls,
        primary: str,
        replicas: Sequence[str],
        *,
        policy: ReadPolicy | None = None,
        config: RouterConfig | None = None,
        shipping: LogShipping | None = None,
        names: Sequence[str] | None = None,
        signer: TokenSigner | None = None,
    ) -> Self:
        """Open every node and start the lag monitor.

        ``primary`` and ``replicas`` are URLs of one scheme: ``postgresql://`` (a
        primary and its streaming standbys) or ``sqlite:///`` (a primary file and
        replica files fed by log shipping, configured by ``shipping``). ``names``
        overrides the node names (default ``host:port`` or the file name). With
        ``signer``, every token the router hands out is signed and every token it is
        given must carry a valid signature.
        """
        config = config or RouterConfig()
        urls = [primary, *replicas]
        schemes = {parse_url(u).scheme for u in urls}
        if len(schemes) != 1 or not schemes <= {"postgresql", "sqlite"}:
            raise InvalidURLError(
                f"a router needs URLs of one scheme, postgresql or sqlite; got {sorted(schemes)}"
            )
        node_names = list(names) if names is not None else _default_names(urls)
        if len(node_names) != len(urls) or len(set(node_names)) != len(urls):
            raise UsageError("names must give one distinct name per node (primary first)")
        stores: list[RelationalStore] = []
        backend: Backend | None = None
        try:
            for url in urls:
                store = await open_store(url, model="relational")
                assert isinstance(store, RelationalStore)
                stores.append(store)
            nodes = [
                Node(n, u, s, config) for n, u, s in zip(node_names, urls, stores, strict=True)
            ]
            nodes[0].role = Role.PRIMARY
            nodes[0].health.admit()
            if schemes == {"sqlite"}:
                backend = SQLiteBackend(LogShipper(stores[0], shipping or LogShipping()))
            else:
                # psycopg is an optional extra: import the backend only when used.
                from multistore.replication._postgres import PostgresBackend

                backend = PostgresBackend()
            router = cls(backend, nodes, policy or RoundRobinPolicy(), config, signer)
            for node in nodes:
                await backend.prepare(node)
            await router.refresh(initial=True)
        except BaseException:
            if backend is not None:
                await backend.close()
            for store in stores:
                with contextlib.suppress(MultistoreError):
                    await store.close()
            raise
        router._monitor = asyncio.create_task(router._watch(), name="replication-monitor")
        return router

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        await self.backend.close()
        for node in self.nodes:
            with contextlib.suppress(MultistoreError):
                await node.store.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- topology --

    @property
    def timeline(self) -> int:
        """The primary's timeline: the same in every router of the cluster and after
        restarts, since it is read from the database; each failover increments it."""
        return self.history.id

    @property
    def primary(self) -> Node:
        for node in self.nodes:
            if node.role is Role.PRIMARY:
                return node
        raise FailoverError("the router has no primary: the last failover did not complete")

    @property
    def replicas(self) -> list[Node]:
        return [n for n in self.nodes if n.role is Role.REPLICA]

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise UsageError(f"no node named {name!r}; nodes: {[n.name for n in self.nodes]}")

    @property
    def shipper(self) -> LogShipper:
        """The log shipper of an embedded (SQLite) router."""
        if not isinstance(self.backend, SQLiteBackend):
            raise UnsupportedError("only a SQLite router ships logs; PostgreSQL streams WAL")
        return self.backend.shipper

    def session(self, token: CausalToken | str | None = None) -> Session:
        """A session that carries the token of its last write to its reads."""
        return Session(self, token)

    # -- writes --

    async def execute(self, sql: str, params: Params | None = None) -> WriteResult:
        """Run one statement on the primary (autocommit); rows changed and its token."""
        n, token = await self._write(lambda q: q.execute(sql, params))
        return WriteResult(n, token)

    async def executemany(self, sql: str, seq_of_params: Sequence[Params]) -> WriteResult:
        n, token = await self._write(lambda q: q.executemany(sql, seq_of_params))
        return WriteResult(n, token)

    async def execute_script(self, sql: str) -> CausalToken:
        _, token = await self._write(lambda q: q.execute_script(sql))
        return token

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[RoutedTransaction]:
        """A transaction on the primary; reads inside it see its writes. After the block,
        ``tx.token`` is the causal token of the commit."""
        node, timeline = self._writable()
        node.in_flight += 1
        try:
            async with self.backend.write_scope(node.store, transaction=True) as scope:
                yield scope
        except StoreUnavailableError as exc:
            self._check_still_primary(node, timeline, exc)
            raise
        finally:
            node.in_flight -= 1
        self._committed(node, timeline, scope)

    async def _write(self, fn: Callable[[Queries], Awaitable[T]]) -> tuple[T, CausalToken]:
        node, timeline = self._writable()
        node.in_flight += 1
        try:
            async with self.backend.write_scope(node.store, transaction=False) as scope:
                result = await fn(scope)
        except StoreUnavailableError as exc:
            self._check_still_primary(node, timeline, exc)
            raise
        finally:
            node.in_flight -= 1
        return result, self._committed(node, timeline, scope)

    def _writable(self) -> tuple[Node, int]:
        if self._closed:
            raise StoreUnavailableError("the router is closed", outcome=Outcome.DEFINITE)
        if self.failing_over:
            raise FailoverError("a failover is in progress: the write was not sent; retry it")
        if self.history_pending is not None:
            raise FailoverError(
                "the new primary's timeline is not known yet, so the write was not sent: "
                f"{self.history_pending}",
                outcome=Outcome.DEFINITE,
            )
        return self.primary, self.history.id

    def _check_still_primary(self, node: Node, timeline: int, exc: BaseException | None) -> None:
        if timeline != self.history.id or node.role is not Role.PRIMARY:
            raise FailoverError(
                f"the write ran on {node.name} while it was being replaced as primary; it "
                "may or may not have taken effect, and would not survive the failover"
            ) from exc

    def _committed(self, node: Node, timeline: int, scope: RoutedTransaction) -> CausalToken:
        self._check_still_primary(node, timeline, None)
        assert scope.position is not None
        node.writes += 1
        self.tracker.observe(scope.position, scope.observed_at)
        token = CausalToken(timeline, scope.position)
        scope.token = self.signer.sign(token) if self.signer is not None else token
        return scope.token

    # -- tokens --

    async def check_token(self, token: CausalToken | str) -> CausalToken:
        """``token`` parsed and checked as a read would check it; raises
        :class:`InvalidTokenError` for a bad signature, an unknown timeline or a
        position ahead of the primary, :class:`ForkedTokenError` when its write may
        have been lost in a failover."""
        if isinstance(token, str):
            token = CausalToken.parse(token)
        if self.history_pending is not None:
            raise StoreUnavailableError(
                f"cannot check causal token {token.unsigned}: the new primary's timeline is "
                f"not known yet: {self.history_pending}",
                outcome=Outcome.DEFINITE,
            )
        if self.signer is not None and not self.signer.verify(token):
            raise InvalidTokenError(
                f"causal token {token.unsigned} is unsigned or its signature is wrong: "
                "this router only takes tokens it signed"
            )
        self.history.check(token)
        if token.timeline == self.history.id and token.position > self.tracker.latest:
            # Maybe written through another router since our last probe: ask once.
            try:
                await self._sample_primary()
            except (MultistoreError, TimeoutError) as exc:
                raise StoreUnavailableError(
                    f"causal token {token.unsigned} is ahead of every position this router "
                    f"has seen, and the primary could not be asked: {exc}",
                    outcome=Outcome.DEFINITE,
                ) from exc
            if token.position > self.tracker.latest:
                raise InvalidTokenError(
                    f"causal token {token.unsigned} is ahead of the primary "
                    f"(at {self.tracker.latest:X}): no write made it; refused unread"
                )
        return token

    # -- reads --

    async def fetch_all(
        self,
        sql: str,
        params: Params | None = None,
        *,
        token: CausalToken | str | None = None,
        max_staleness: float | None = None,
        strong: bool = False,
        causal_wait: float | None = None,
    ) -> list[Row]:
        """Rows of a query. ``token``: see at least that write (read-your-writes);
        ``max_staleness``: from a replica at most that many seconds behind;
        ``strong``: from the primary. ``causal_wait`` overrides the config's bound."""
        rows, _ = await self._read(
            sql, lambda q: q.fetch_all(sql, params), token, max_staleness, strong, causal_wait
        )
        return rows

    async def fetch_one(
        self,
        sql: str,
        params: Params | None = None,
        *,
        token: CausalToken | str | None = None,
        max_staleness: float | None = None,
        strong: bool = False,
        causal_wait: float | None = None,
    ) -> Row | None:
        row, _ = await self._read(
            sql, lambda q: q.fetch_one(sql, params), token, max_staleness, strong, causal_wait
        )
        return row

    async def fetch_val(
        self,
        sql: str,
        params: Params | None = None,
        *,
        token: CausalToken | str | None = None,
        max_staleness: float | None = None,
        strong: bool = False,
        causal_wait: float | None = None,
    ) -> Any:
        row = await self.fetch_one(
            sql,
            params,
            token=token,
            max_staleness=max_staleness,
            strong=strong,
            causal_wait=causal_wait,
        )
        return None if row is None else row[0]

    async def _read(
        self,
        sql: str,
        fn: Callable[[Queries | RelationalStore], Awaitable[T]],
        token: CausalToken | str | None,
        max_staleness: float | None,
        strong: bool,
        causal_wait: float | None,
    ) -> tuple[T, CausalToken | None]:
        """Run a read; a statement that writes is run as a write (its token returned)."""
        if not is_read(sql):
            return await self._write(fn)
        if token is not None:
            token = await self.check_token(token)
        if max_staleness is not None and max_staleness < 0:
            raise UsageError("max_staleness must be >= 0 seconds")
        tried: set[str] = set()
        while True:
            if strong:
                node = self.primary
            elif token is None:  # no wait possible: stay synchronous
                node = self._pick(self._eligible(max_staleness, tried))
            else:
                node = await self._choose(token, max_staleness, causal_wait, tried)
            node.in_flight += 1
            node.reads += 1
            try:
                # The store's own one-statement call: its fast path, no lease object.
                return await fn(node.store), None
            except StoreUnavailableError as exc:
                if node.role is not Role.REPLICA:
                    raise
                # Reads are safe to retry: eject the replica and route again.
                node.health.eject(str(exc), time.monotonic())
                tried.add(node.name)
            finally:
                node.in_flight -= 1

    async def _choose(
        self,
        token: CausalToken | None,
        max_staleness: float | None,
        causal_wait: float | None,
        tried: set[str],
    ) -> Node:
        eligible = self._eligible(max_staleness, tried)
        if token is not None and eligible:
            eligible = await self._replayed(eligible, token.position, causal_wait)
        return self._pick(eligible)

    def _eligible(self, max_staleness: float | None, tried: set[str]) -> list[Node]:
        """Replicas in rotation, not tried yet, within ``max_staleness`` if given."""
        if max_staleness is None:
            return [
                n
                for n in self.nodes
                if n.role is Role.REPLICA and n.health.in_rotation and n.name not in tried
            ]
        now = time.monotonic()
        return [
            n
            for n in self.nodes
            if n.role is Role.REPLICA
            and n.health.in_rotation
            and n.name not in tried
            and self.staleness_bound(n, now) <= max_staleness
        ]

    def staleness_bound(self, node: Node, now: float | None = None) -> float:
        """An upper bound, in seconds, on how stale a read on ``node`` is at ``now``:
        the time since the last primary sample at or below its replay position
        (``math.inf`` when unknown: behind every sample kept, or on a timeline that
        is not part of the primary's history)."""
        if node.role is Role.PRIMARY:
            return 0.0
        if node.timeline is not None and not self.history.contains(node.timeline, node.position):
            return math.inf
        return self.tracker.lag_seconds(node.position, time.monotonic() if now is None else now)

    def _pick(self, eligible: list[Node]) -> Node:
        if not eligible:
            return self.primary
        return eligible[self.policy.choose(eligible)]

    async def _replayed(
        self, candidates: list[Node], position: int, causal_wait: float | None
    ) -> list[Node]:
        """The candidates that replayed past ``position``, polling with backoff up to
        the causal wait bound; empty when none did in time."""
        wait = self.config.causal_wait if causal_wait is None else causal_wait
        deadline = time.monotonic() + wait
        delay = _POLL_FIRST
        polled = False  # the first poll goes out at once, later ones back off
        while True:
            ready = [n for n in candidates if n.position >= position]
            if ready:
                return ready
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            if polled:
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, _POLL_CAP)
            polled = True
            await asyncio.gather(
                *(self._poll(n, max(deadline - time.monotonic(), 0.01)) for n in candidates)
            )

    async def wait_replayed(self, token: CausalToken | str, *, within: float = 10.0) -> None:
        """Wait until every replica has replayed past ``token`` (polling with backoff);
        with :class:`~multistore.errors.StoreTimeoutError` after ``within`` seconds.
        The token is checked first, as a read checks it."""
        token = await self.check_token(token)
        deadline = time.monotonic() + within
        delay = _POLL_FIRST
        while True:
            behind = [n for n in self.replicas if n.position < token.position]
            if not behind:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StoreTimeoutError(
                    f"replicas {[n.name for n in behind]} did not replay {token} "
                    f"within {within:g} s",
                    outcome=Outcome.DEFINITE,
                )
            await asyncio.gather(*(self._poll(n, max(remaining, 0.01)) for n in behind))
            if any(n.position < token.position for n in behind):
                await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0)))
                delay = min(delay * 2, _POLL_CAP)

    async def _poll(self, node: Node, bound: float) -> None:
        node.polls += 1
        with contextlib.suppress(MultistoreError, TimeoutError):
            state = await bounded(self.backend.replay_state(node), bound)
            node.position = max(node.position, state.position)

    # -- the lag and health monitor --

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.probe_interval)
            with contextlib.suppress(MultistoreError):
                await self.refresh()

    async def refresh(self, *, initial: bool = False) -> None:
        """One round of probes: the primary's position, each replica's lag and health;
        retries fencing of former primaries; may start an automatic failover. The
        first round (``initial``) also reads the primary's timeline."""
        from multistore.replication._failover import failover, retry_fences

        if self.failing_over:
            return
        timeout = self.config.probe_timeout
        try:
            await self._probe_primary()
            if initial or self.history_pending is not None:
                self.history = await bounded(self.backend.timeline(self.primary), timeout)
                self.primary.timeline = self.history.id
                self.history_pending = None
        except (MultistoreError, TimeoutError) as exc:
            self.primary_failures += 1
            if initial:
                raise StoreUnavailableError(f"cannot probe the primary: {exc}") from exc
        else:
            self.primary_failures = 0
        await asyncio.gather(
            *(self._probe(n, initial) for n in self.replicas),
            retry_fences(self),
        )
        if (
            self.config.auto_failover
            and not initial
            and self.primary_failures >= self.config.failures_to_failover
        ):
            await failover(self)

    async def _probe_primary(self) -> None:
        primary = self.primary
        started = time.monotonic()  # the position is read after this: a valid sample time
        position = await bounded(self.backend.primary_position(primary), self.config.probe_timeout)
        primary.position = max(primary.position, position)
        primary.probed_at = started
        self.tracker.observe(position, started)

    async def _sample_primary(self) -> None:
        """One primary probe, shared by every caller that asks while it runs."""
        sampling = self._sampling
        if sampling is None or sampling.done():
            sampling = self._sampling = asyncio.ensure_future(self._probe_primary())
            sampling.add_done_callback(_retrieve)
        await asyncio.shield(sampling)

    async def _probe(self, node: Node, initial: bool) -> None:
        started = time.monotonic()
        if not node.health.should_probe(started):
            return
        try:
            state = await bounded(self.backend.replay_state(node), self.config.probe_timeout)
        except (MultistoreError, TimeoutError) as exc:
            error = str(exc) or "the probe timed out"
            if isinstance(exc, TimeoutError | StoreTimeoutError):
                error = f"lag probe timed out after {self.config.probe_timeout:g} s"
            node.health.probe_failed(error, time.monotonic())
            return
        now = time.monotonic()
        node.position = max(node.position, state.position)
        if state.timeline is not None:
            node.timeline = state.timeline
        node.replay_time = state.replay_time
        node.probed_at = started
        node.lag_positions = max(0, self.tracker.latest - node.position)
        node.lag_seconds = self.staleness_bound(node, now)
        if initial and node.lag_positions == 0 and node.lag_seconds < math.inf:
            node.health.admit()
        elif self.primary_failures:
            node.health.probe_reachable()  # no fresh primary sample: lag is not measured
        else:
            node.health.probe_ok(node.lag_seconds, now)

    async def failover(self) -> str:
        """Promote the most advanced replica; the name of the new primary. See
        :func:`multistore.replication._failover.failover`."""
        from multistore.replication._failover import failover

        return await failover(self)

    def __repr__(self) -> str:
        return (
            f"<Router {self.backend.scheme} primary={self.primary.name} timeline={self.history.id}>"
        )


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a shared probe's outcome as seen (its waiters may all have been cancelled)."""
    if not future.cancelled():
        future.exception()


def _default_names(urls: Sequence[str]) -> list[str]:
    names: list[str] = []
    for url in urls:
        parsed = parse_url(url)
        base = Path(parsed.path).stem if parsed.is_file else f"{parsed.host}:{parsed.port}"
        name, i = base, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.append(name)
    return names
