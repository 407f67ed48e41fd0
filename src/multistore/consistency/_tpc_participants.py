"""What a 2PC participant and one transaction branch on it must do.

A :class:`Participant` is one database (a store URL) that can hold prepared branches
and list them after a crash; a :class:`Branch` is one transaction's work on it,
driven by the coordinator through ``prepare`` and ``commit``/``rollback``.
:func:`open_participant` picks the implementation from the URL scheme.

Every participant that writes at prepare also writes a *commit marker* (its branch id)
inside the branch, so after the fact :meth:`Participant.committed` tells a branch that
committed from one that was lost or rolled back behind the coordinator's back.

Failures are multistore errors: a definite one from ``prepare`` is a NO vote,
an indeterminate one means the branch may be prepared (the coordinator then aborts,
and presumed abort makes recovery roll it back).

A participant with a :attr:`Participant.decisions` table (PostgreSQL, MariaDB) can be
a transaction's *last resource*: its branch is not prepared but committed in one phase
by :meth:`Branch.commit_deciding`, together with the transaction's commit record.

Every participant also notes which decision logs have used it (:meth:`Participant.note_log`),
so that recovery reading one log can say where another log's branches are decided.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Sequence
from typing import Any

from multistore.consistency._tpc_log import DecisionLog
from multistore.core._tpc import Vote, Xid
from multistore.errors import UnsupportedError
from multistore.stores import missing_driver
from multistore.stores.relational import Params, RelationalStore, Row
from multistore.urls import StoreURL, parse_url

__all__ = [
    "LOGS_SCHEMA",
    "LOGS_TABLE",
    "Branch",
    "Participant",
    "SQLBranch",
    "logs_in",
    "note_log_in",
    "open_participant",
    "purgeable",
]

#: Which decision logs have used a participant (log id -> where the log is).
LOGS_TABLE = "multistore_tpc_logs"


LOGS_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {LOGS_TABLE} "
    "(log_id VARCHAR(16) PRIMARY KEY, location VARCHAR(1000) NOT NULL)"
)


async def note_log_in(store: RelationalStore, log_id: str, location: str) -> None:
    """Upsert ``log_id -> location`` into :data:`LOGS_TABLE` of ``store``."""
    insert = f"INSERT INTO {LOGS_TABLE} (log_id, location) VALUES (:id, :location) "
    if store.url.scheme == "mariadb":
        insert += "ON DUPLICATE KEY UPDATE location = VALUES(location)"
    else:
        insert += "ON CONFLICT (log_id) DO UPDATE SET location = excluded.location"
    await store.execute(insert, {"id": log_id, "location": location})


async def logs_in(store: RelationalStore) -> dict[str, str]:
    rows = await store.fetch_all(f"SELECT log_id, location FROM {LOGS_TABLE}")
    return {str(row["log_id"]): str(row["location"]) for row in rows}


def purgeable(
    gids: Sequence[str], keep: Collection[str], owned: Callable[[Xid], bool]
) -> list[str]:
    """Of the commit markers ``gids`` (old enough to go), those of branches ``owned``
    by the recovery run that purges (its log and nodes) and not in ``keep``."""
    out: list[str] = []
    for gid in gids:
        xid = Xid.try_parse(gid)
        if xid is not None and gid not in keep and owned(xid):
            out.append(gid)
    return out


class Branch(abc.ABC):
    """One distributed transaction's work on one participant."""

    def __init__(self, participant: Participant, xid: Xid) -> None:
        self.participant = participant
        self.xid = xid

    @property
    def name(self) -> str:
        return self.participant.name

    @property
    def idle(self) -> bool:
        """True when the branch started nothing on its store (it ran no statement)."""
        return False

    @abc.abstractmethod
    async def prepare(self) -> Vote:
        """Phase 1: make the work durable and ready to commit, or refuse."""

    @abc.abstractmethod
    async def commit(self, *, one_phase: bool = False) -> bool:
        """Phase 2 commit (``one_phase``: commit without a prepare). False when the
        participant no longer knows the prepared branch (a heuristic outcome)."""

    @abc.abstractmethod
    async def commit_deciding(self, prepared: Sequence[str]) -> None:
        """Last resource: commit this (unprepared) branch in one phase together with the
        commit record of its transaction naming the ``prepared`` participants. Once it
        committed, commit is decided; a definite error means it did not (and never will).
        A participant without :attr:`Participant.decisions` raises
        :class:`~multistore.errors.UnsupportedError` (the coordinator never asks it)."""

    @abc.abstractmethod
    async def rollback(self) -> None:
        """Roll back, whether the branch is active or prepared."""

    @abc.abstractmethod
    async def release(self) -> None:
        """Give back the connection; a prepared branch stays prepared for recovery."""


class SQLBranch(Branch):
    """A branch on a relational store: statements with ``:name`` placeholders."""

    @abc.abstractmethod
    async def execute(self, sql: str, params: Params | None = None) -> int:
        """Run one statement; the number of rows it changed."""

    @abc.abstractmethod
    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]: ...

    async def fetch_one(self, sql: str, params: Params | None = None) -> Row | None:
        rows = await self.fetch_all(sql, params)
        return rows[0] if rows else None

    async def fetch_val(self, sql: str, params: Params | None = None) -> Any:
        row = await self.fetch_one(sql, params)
        return None if row is None else row[0]


class Participant(abc.ABC):
    """A database that takes part in two-phase commit."""

    decisions: DecisionLog | None = None
    """The commit records of transactions this participant was the last resource of
    (None: it cannot be one)."""
    last_resource_rank = 0
    """Preference as a last resource among those that can be one (lower first)."""

    def __init__(self, name: str, url: StoreURL) -> None:
        self.name = name
        self.url = url

    def accepts(self, xid: Xid) -> bool:
        """Whether a branch id this long fits the participant (MariaDB: 64-byte bqual)."""
        return True

    @abc.abstractmethod
    async def begin(self, xid: Xid) -> Branch:
        """Start the branch ``xid`` (already named for this participant)."""

    @abc.abstractmethod
    async def in_doubt(self) -> list[Xid]:
        """Branches of this participant (named after it) prepared here, by any
        multistore coordinator, and not yet resolved."""

    @abc.abstractmethod
    async def commit_prepared(self, xid: Xid) -> bool:
        """Commit a prepared branch; False when there is no such branch."""

    @abc.abstractmethod
    async def rollback_prepared(self, xid: Xid) -> bool:
        """Roll back a prepared branch; False when there is no such branch."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def committed(self, xid: Xid) -> bool | None:
        """Whether branch ``xid`` committed here, read from the commit marker its work
        wrote at prepare: True or False, or None when this participant cannot tell."""
        return None

    async def purge_markers(
        self, older_than: float, keep: Collection[str], owned: Callable[[Xid], bool]
    ) -> int:
        """Drop commit markers older than ``older_than`` seconds of the branches
        ``owned`` (by the log and nodes of the recovery run that purges), except the
        branch ids in ``keep`` (those a commit record still names); how many were dropped."""
        return 0

    @abc.abstractmethod
    async def note_log(self, log_id: str, location: str) -> None:
        """Remember that decision log ``log_id``, at ``location``, uses this participant."""

    @abc.abstractmethod
    async def known_logs(self) -> dict[str, str]:
        """The decision logs that have used this participant: log id -> location."""

    @abc.abstractmethod
    async def execute_script(self, sql: str) -> None:
        """Run DDL (or other setup) outside any distributed transaction
        (:class:`~multistore.errors.UnsupportedError` where there is no SQL)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.url.render()}>"


async def open_participant(name: str, url: str | StoreURL) -> Participant:
    """The participant for a store URL: PostgreSQL, MariaDB, SQLite or Redis."""
    parsed = parse_url(url)
    try:
        return await _open_participant(name, parsed)
    except ImportError as exc:  # the scheme's driver is an extra that is not installed
        raise missing_driver(parsed.scheme, exc) from None


async def _open_participant(name: str, parsed: StoreURL) -> Participant:
    if parsed.scheme == "postgresql":
        from multistore.consistency._tpc_sql import PostgresParticipant

        return await PostgresParticipant.open(name, parsed)
    if parsed.scheme == "mariadb":
        from multistore.consistency._tpc_sql import MariaDBParticipant

        return await MariaDBParticipant.open(name, parsed)
    if parsed.scheme == "sqlite":
        from multistore.consistency._tpc_sqlite import SQLiteParticipant

        return await SQLiteParticipant.open(name, parsed)
    if parsed.scheme == "redis":
        from multistore.consistency._tpc_redis import RedisParticipant

        return await RedisParticipant.open(name, parsed)
    raise UnsupportedError(
        f"participant {name!r}: {parsed.scheme}:// cannot take part in two-phase commit "
        "(postgresql, mariadb, sqlite and redis can)"
    )
