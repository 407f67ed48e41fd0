"""One node of a replicated relational store, and what each backend must provide.

A :class:`Node` wraps an open :class:`~multistore.stores.relational.RelationalStore`
with what the router knows of it: its role, its rotation health, its last measured
position, timeline and lag, and counters. A :class:`Backend` holds the
backend-specific operations (positions, timelines, the write scope that yields the
causal position, promote, repoint, fence): PostgreSQL streaming replication in
``_postgres.py``, the embedded SQLite change log in ``_logship.py``.
"""

from __future__ import annotations

import abc
import datetime as dt
import enum
import functools
import math
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from multistore.errors import UsageError
from multistore.replication._config import RouterConfig
from multistore.replication._lag import ReplicaHealth
from multistore.replication._timeline import Timeline
from multistore.replication._token import CausalToken
from multistore.stores.relational import Params, Queries, RelationalStore, Row, Transaction

__all__ = ["Backend", "Node", "Role", "RoutedTransaction", "is_read"]

_READ_START = re.compile(r"^\s*(?:\(\s*)*(select|values|show|table|explain)\b", re.IGNORECASE)
_WITH_START = re.compile(r"^\s*with\b", re.IGNORECASE)
_WRITE_WORD = re.compile(r"\b(insert|update|delete|merge)\b", re.IGNORECASE)
_LOCKING = re.compile(r"\bfor\s+(update|no\s+key\s+update|share|key\s+share)\b", re.IGNORECASE)
_SIDE_EFFECT = re.compile(r"\b(nextval|setval|pg_advisory\w*|txid_current)\s*\(", re.IGNORECASE)


@functools.lru_cache(maxsize=1024)
def is_read(sql: str) -> bool:
    """True when ``sql`` may go to a replica: a plain SELECT/VALUES/SHOW/EXPLAIN, or a
    WITH query without data-modifying parts; not ``FOR UPDATE``/``FOR SHARE`` and no
    calls that change state (``nextval``, advisory locks)."""
    if _LOCKING.search(sql) or _SIDE_EFFECT.search(sql):
        return False
    if _READ_START.match(sql):
        return not (sql.lstrip()[:7].lower() == "explain" and "analyze" in sql.lower())
    if _WITH_START.match(sql):
        return _WRITE_WORD.search(sql) is None
    return False


class Role(enum.Enum):
    PRIMARY = "primary"
    REPLICA = "replica"
    FENCED = "fenced"
    """A former primary: the router never sends it anything again."""
    REBUILD = "rebuild"
    """A replica that could not follow the new primary; rebuild it from a base backup."""


class Node:
    """A store plus what the router knows about it."""

    def __init__(self, name: str, url: str, store: RelationalStore, config: RouterConfig) -> None:
        self.name = name
        self.url = url
        self.store = store
        self.role = Role.REPLICA
        self.health = ReplicaHealth(config)
        self.position = 0
        """Last measured replay position (a replica) or log position (the primary)."""
        self.timeline: int | None = None
        """The timeline it was last seen on (a standby: the one it receives); None
        while unknown."""
        self.probed_at = 0.0
        self.lag_seconds = math.inf
        """An upper bound on its staleness at the last probe (``math.inf``: unknown)."""
        self.lag_positions = 0
        self.replay_time: dt.datetime | None = None
        self.in_flight = 0
        self.reads = 0
        self.writes = 0
        self.polls = 0
        """Replay-position polls made while reads with a causal token waited for it."""
        self.fence_pending = False

    def __repr__(self) -> str:
        return f"<Node {self.name} {self.role.value} {self.health.state.value}>"


@dataclass(frozen=True)
class ReplayState:
    position: int
    """What the node has applied (a standby: replay LSN)."""
    received: int
    """What it has received and will apply once promoted (at least ``position``)."""
    replay_time: dt.datetime | None = None
    timeline: int | None = None
    """The timeline it is on (a standby: the one it receives), if known."""


class RoutedTransaction(Queries):
    """The statements of a write through the router: a transaction, or one autocommit
    statement. Reads inside it run on the primary too. ``token`` is set once it
    committed."""

    def __init__(
        self, inner: Queries, backend: Backend, root: RoutedTransaction | None = None
    ) -> None:
        self.inner = inner
        self._backend = backend
        self._root = root or self
        self.started: float = root.started if root is not None else time.time()
        """When the write began (the time its change-log entries carry)."""
        self.position: int | None = None
        """The change-log position of its last logged statement (log shipping); after
        the scope, the causal position of the write."""
        self.observed_at = 0.0
        """A monotonic time at or before which ``position`` was read after the
        commit: every commit made before it is at or below ``position``."""
        self.token: CausalToken | None = None

    def note_position(self, position: int) -> None:
        self._root.position = position

    async def execute(self, sql: str, params: Params | None = None) -> int:
        n = await self.inner.execute(sql, params)
        if not is_read(sql):
            await self._backend.log(self, "execute", sql, params)
        return n

    async def executemany(self, sql: str, seq_of_params: Sequence[Params]) -> int:
        n = await self.inner.executemany(sql, seq_of_params)
        await self._backend.log(self, "executemany", sql, [dict(p) for p in seq_of_params])
        return n

    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        rows = await self.inner.fetch_all(sql, params)
        if not is_read(sql):
            await self._backend.log(self, "execute", sql, params)
        return rows

    async def fetch_one(self, sql: str, params: Params | None = None) -> Row | None:
        row = await self.inner.fetch_one(sql, params)
        if not is_read(sql):
            await self._backend.log(self, "execute", sql, params)
        return row

    async def execute_script(self, sql: str) -> None:
        await self.inner.execute_script(sql)
        await self._backend.log(self, "script", sql, None)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[RoutedTransaction]:
        """A savepoint inside this transaction (only inside ``router.transaction()``)."""
        if not isinstance(self.inner, Transaction):
            raise UsageError("a savepoint needs router.transaction(), not a single write")
        async with self.inner.transaction() as savepoint:
            yield RoutedTransaction(savepoint, self._backend, self._root)


class Backend(abc.ABC):
    """The operations the router needs that differ per backend."""

    scheme: ClassVar[str]
    fence_may_time_out_unreached: ClassVar[bool] = True
    """Whether a fence that times out may not have reached the node (a server across a
    network). False for a local file: the fence reached it and waited for another
    writer, which may still commit there, so nothing may be promoted."""

    async def prepare(self, node: Node) -> None:  # noqa: B027 - optional hook
        """Called once per node at open."""

    async def log(self, scope: RoutedTransaction, kind: str, sql: str, params: Any) -> None:  # noqa: B027 - only log-shipping backends record statements
        """Record a write statement in the change log (log-shipping backends)."""

    @abc.abstractmethod
    def write_scope(
        self, store: RelationalStore, *, transaction: bool
    ) -> AbstractAsyncContextManager[RoutedTransaction]:
        """Run writes on the primary; ``scope.position`` is the causal position after
        the scope committed."""

    @abc.abstractmethod
    async def primary_position(self, node: Node) -> int:
        """The primary's log position: at or past the end of every commit made before
        the call (PostgreSQL: the WAL insert position)."""

    @abc.abstractmethod
    async def timeline(self, node: Node) -> Timeline:
        """The timeline of a primary and where each of its ancestors ended."""

    @abc.abstractmethod
    async def replay_state(self, node: Node) -> ReplayState: ...

    @abc.abstractmethod
    async def promote(self, node: Node) -> None:
        """Make a replica a primary that takes writes; return once it does."""

    @abc.abstractmethod
    async def repoint(self, node: Node, primary: Node) -> None:
        """Make a replica follow ``primary``."""

    @abc.abstractmethod
    async def fence(self, node: Node) -> int | None:
        """Stop a former primary from taking writes from anyone, for good; its last log
        position when known. Raises :class:`~multistore.errors.StoreUnavailableError`
        (or ``TimeoutError``) when the node cannot be reached, another
        :class:`~multistore.errors.MultistoreError` when it was reached but could not
        be fenced."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop background work (the log shipper)."""
