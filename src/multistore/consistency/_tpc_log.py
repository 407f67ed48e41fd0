"""The coordinator's durable decision log, on a relational store (presumed abort).

Only decisions are written: a **commit** record by the coordinator, forced to disk
before phase 2 starts, and an **abort** record by a recovery manager before it rolls
back a branch that had no decision. Both are inserts on the same primary key, so a
coordinator still in phase 1 and a recovery run cannot both win: the loser's insert
fails and the coordinator aborts. A commit record is deleted once every branch
confirmed (forgotten); abort records are kept for ``abort_retention`` seconds.

SQLite (opened with ``synchronous=full`` so a commit survives a power cut) serves the
coordinators of one machine; PostgreSQL lets coordinators on several machines share one
log. With no URL the log is the config's ``transactions`` role (:func:`default_log`):
the coordinator, :func:`~multistore.consistency.recover_transactions` and
``multistore recover`` all find it the same way.

A log has an id, made when it is created, and keeps its coordinators' node leases
(:mod:`._tpc_nodes`); every branch id names the log that decides it.

Commit records are **group-committed**: decisions that arrive while a write is in
flight are queued and written together in one transaction (one fsync) after it, so
concurrent transactions share the cost of forcing the log.

The same records, in ``multistore_tpc_decisions``, live in each PostgreSQL or MariaDB
participant: when one is a transaction's *last resource*, its branch inserts the
commit record itself and commits in one phase (see ``_tpc_coordinator``), and recovery
reads and writes that participant's table through a :class:`DecisionLog` on its store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Self, cast

from multistore.config import load_config
from multistore.consistency._tpc_nodes import SCHEMA as NODES_SCHEMA
from multistore.consistency._tpc_nodes import NodeRegistry
from multistore.core._tpc import Decision, Xid
from multistore.errors import DuplicateKeyError, InvalidQueryError, MultistoreError, StoreError
from multistore.stores._registry import open_store
from multistore.stores.relational import RelationalStore
from multistore.stores.relational._sqlite import SQLiteRelationalStore
from multistore.urls import StoreURL, parse_url

__all__ = [
    "DECISIONS_TABLE",
    "LOG_TABLE",
    "DecisionLog",
    "LogRecord",
    "default_log",
    "ensure_table",
    "schema",
]

LOG_TABLE: Final = "multistore_tpc_log"
#: The same records, kept by a participant that is a transaction's last resource.
DECISIONS_TABLE: Final = "multistore_tpc_decisions"


def schema(table: str) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for a table of decision records."""
    return f"""
CREATE TABLE IF NOT EXISTS {table} (
    gtrid VARCHAR(80) PRIMARY KEY,
    node VARCHAR(24) NOT NULL,
    decision VARCHAR(8) NOT NULL,
    participants TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL
)
"""


def _insert_commit(table: str) -> str:
    return (
        f"INSERT INTO {table} (gtrid, node, decision, participants, created) "
        "VALUES (:gtrid, :node, 'commit', :participants, :created)"
    )


def _write_sqlite(
    db: sqlite3.Connection,
    sql: tuple[str, str],
    inserts: list[dict[str, Any]],
    deletes: list[dict[str, Any]],
) -> None:
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(sql[0], inserts)
            db.executemany(sql[1], deletes)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    except sqlite3.IntegrityError as exc:
        raise DuplicateKeyError(f"sqlite: {exc}") from exc
    except sqlite3.Error as exc:
        raise StoreError(f"sqlite: {exc}") from exc


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


async def ensure_table(store: RelationalStore, ddl: str) -> None:
    """Run a ``CREATE TABLE IF NOT EXISTS``; when another process creates the same table
    at the same moment PostgreSQL reports a duplicate (IF NOT EXISTS does not cover that
    race) and the table exists: run it once more to be sure."""
    try:
        await store.execute_script(ddl)
    except (DuplicateKeyError, InvalidQueryError) as exc:
        if not isinstance(exc, DuplicateKeyError) and "already exists" not in exc.message:
            raise
        await store.execute_script(ddl)


def default_log() -> StoreURL:
    """The decision log used when none is given: the ``transactions`` role of the
    config (``multistore.toml``, ``$MULTISTORE_CONFIG``), by default
    ``.multistore/transactions.db`` in the working directory."""
    return load_config().role("transactions").url


def _located(url: StoreURL) -> StoreURL:
    """A SQLite log by its absolute path (so that messages, and the participants that
    note which logs use them, name the same file from any working directory)."""
    if url.scheme != "sqlite" or url.path == ":memory:":
        return url
    path = Path(url.path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return dataclasses.replace(url, database=str(path))


@dataclass(frozen=True)
class LogRecord:
    gtrid: str
    node: str
    decision: Decision
    participants: tuple[str, ...]
    created: float


class DecisionLog:
    """Commit and abort decisions by global transaction id, in ``table`` of ``store``
    (the coordinator's log, or a last-resource participant's decisions)."""

    def __init__(
        self, store: RelationalStore, table: str = LOG_TABLE, *, forget_every: int = 0
    ) -> None:
        self.store = store
        self.table = table
        self._insert = _insert_commit(table)
        self._delete = f"DELETE FROM {table} WHERE gtrid = :gtrid"
        self._queue: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._forgotten: list[str] = []
        self._forget_every = forget_every
        self._forgetter: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self.writes = 0
        """How many log transactions wrote commit records (for statistics)."""
        self.nodes = NodeRegistry(store)
        """The coordinator nodes' leases (a coordinator's log; see ``_tpc_nodes``)."""
        self.log_id = ""
        """The log's id, named by every branch id it decides (a coordinator's log)."""
        self.location = store.url.render()
        """Where the log is, for messages (password hidden)."""

    @classmethod
    async def open(cls, url: str | StoreURL | None = None) -> Self:
        """Open (and, if new, create) the log at ``url``; :func:`default_log` if None."""
        parsed = _located(default_log() if url is None else parse_url(url))
        if parsed.scheme == "etcd":  # a replicated log: decisions outlive this machine
            from multistore.consistency._tpc_etcd import EtcdDecisionLog

            return cast(Self, await EtcdDecisionLog.open_url(parsed))
        location = parsed.render()
        if parsed.scheme == "sqlite" and "synchronous" not in parsed.options:
            parsed = dataclasses.replace(parsed, options={**parsed.options, "synchronous": "full"})
        store = cast(RelationalStore, await open_store(parsed, model="relational"))
        try:
            await ensure_table(store, schema(LOG_TABLE))
            for ddl in NODES_SCHEMA.split(";"):
                await ensure_table(store, ddl)
            self = cls(store)
            self.log_id = await self.nodes.log_id()
        except BaseException:
            await store.close()
            raise
        self.location = location
        return self

    def describe(self) -> str:
        """``log <id> at <url>``."""
        return f"log {self.log_id} at {self.location}"

    def owns(self, xid: Xid, known_nodes: Sequence[str] | set[str] = ()) -> bool:
        """Whether this log decides ``xid``: its id names this log, or (an id written
        before logs had ids) its node is one this log knows."""
        return xid.log == self.log_id if xid.log else xid.node in known_nodes

    async def close(self) -> None:
        try:
            if self._writer is not None and not self._writer.done():
                await self._writer
            with contextlib.suppress(MultistoreError):
                await self.flush()
        finally:
            await self.store.close()

    async def log_commit(self, xid: Xid, participants: Sequence[str]) -> None:
        """Force the commit decision to disk. :class:`~multistore.errors.DuplicateKeyError`
        when a recovery manager already logged abort for this transaction."""
        params = {
            "gtrid": xid.gtrid,
            "node": xid.node,
            "participants": json.dumps(sorted(participants)),
            "created": time.time(),
        }
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((params, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_queued())
        # One future per caller: a cancelled caller cancels only its own future, and the
        # writer still writes the record (a decision once queued may be on disk).
        await future

    def forget_later(self, xid: Xid) -> None:
        """Drop the record of a finished transaction later, with no write of its own
        now: with the next log write (or at :meth:`flush`), or — with ``forget_every`` —
        in the background once that many are queued. If the process dies first,
        recovery finds nothing in doubt for it and forgets it then."""
        self._forgotten.append(xid.gtrid)
        if (
            self._forget_every
            and len(self._forgotten) >= self._forget_every
            and (self._forgetter is None or self._forgetter.done())
        ):
            self._forgetter = asyncio.ensure_future(self._forget_quietly())

    async def _forget_quietly(self) -> None:
        with contextlib.suppress(MultistoreError):  # left queued: the next try, or recovery
            await self._delete_forgotten()

    async def _delete_forgotten(self) -> None:
        # One autocommit DELETE for the whole batch: one commit, so one forced write of
        # the database's log instead of one per record (a forget need not be durable at
        # once: a record that comes back after a crash is forgotten by recovery). Keys
        # in order, equality on the primary key only: it locks just the listed rows,
        # and the gap locks InnoDB takes for a key already gone never wait, so it
        # cannot deadlock with a transaction inserting a record.
        forgotten, self._forgotten = self._forgotten, []
        if not forgotten:
            return
        keys = sorted(set(forgotten))
        listed = ", ".join(f":g{i}" for i in range(len(keys)))
        try:
            await self.store.execute(
                f"DELETE FROM {self.table} WHERE gtrid IN ({listed})",
                {f"g{i}": gtrid for i, gtrid in enumerate(keys)},
            )
        except BaseException:
            self._forgotten += forgotten
            raise

    async def flush(self) -> None:
        """Write the queued forgets now."""
        if self._forgetter is not None and not self._forgetter.done():
            await self._forgetter
        await self._delete_forgotten()

    async def _write_queued(self) -> None:
        # Let the transactions whose votes arrived in this turn of the event loop queue
        # their decisions too: one more write less, no measurable wait.
        await asyncio.sleep(0)
        while self._queue:
            batch, self._queue = self._queue, []
            forgotten, self._forgotten = self._forgotten, []
            try:
                await self._write(batch, forgotten)
                self.writes += 1
            except DuplicateKeyError:
                # Some transaction of the batch was aborted by recovery: write one by one
                # so only that one fails.
                self._forgotten += forgotten
                for params, future in batch:
                    try:
                        await self.store.execute(self._insert, params)
                        self.writes += 1
                    except MultistoreError as exc:
                        _settle(future, exc)
                    else:
                        _settle(future, None)
                continue
            except MultistoreError as exc:
                self._forgotten += forgotten
                for _, future in batch:
                    _settle(future, exc)
                continue
            for _, future in batch:
                _settle(future, None)

    async def _write(
        self, batch: list[tuple[dict[str, Any], asyncio.Future[None]]], forgotten: list[str]
    ) -> None:
        """One transaction: the batch's commit records, and the queued forgets."""
        inserts = [params for params, _ in batch]
        deletes = [{"gtrid": g} for g in forgotten]
        if isinstance(self.store, SQLiteRelationalStore):
            # One hop to the SQLite worker instead of four.
            sql = (self._insert, self._delete)
            await self.store.run(lambda db: _write_sqlite(db, sql, inserts, deletes))
            return
        async with self.store.transaction() as tx:
            await tx.executemany(self._insert, inserts)
            if deletes:
                await tx.executemany(self._delete, deletes)

    async def log_abort(self, xid: Xid) -> Decision:
        """Log abort unless a decision is there already; the decision that stands."""
        # Waits for a transaction that inserted the same key and is still open (a last
        # resource committing): its outcome decides which row stands.
        values = "VALUES (:gtrid, :node, 'abort', '[]', :created)"
        columns = f"{self.table} (gtrid, node, decision, participants, created)"
        await self.store.execute(
            f"INSERT IGNORE INTO {columns} {values}"
            if self.store.url.scheme == "mariadb"
            else f"INSERT INTO {columns} {values} ON CONFLICT (gtrid) DO NOTHING",
            {"gtrid": xid.gtrid, "node": xid.node, "created": time.time()},
        )
        decision = await self.decision(xid)
        assert decision is not None
        return decision

    async def decision(self, xid: Xid) -> Decision | None:
        value = await self.store.fetch_val(
            f"SELECT decision FROM {self.table} WHERE gtrid = :gtrid", {"gtrid": xid.gtrid}
        )
        return None if value is None else Decision(value)

    async def forget(self, xid: Xid) -> None:
        """Drop the record of a transaction that every branch has finished."""
        await self.store.execute(self._delete, {"gtrid": xid.gtrid})

    async def records(self, node: str | None = None) -> list[LogRecord]:
        """Every record (of one coordinator node, if given), oldest first."""
        where = "" if node is None else " WHERE node = :node"
        rows = await self.store.fetch_all(
            f"SELECT gtrid, node, decision, participants, created FROM {self.table}{where} "
            "ORDER BY created",
            {} if node is None else {"node": node},
        )
        return [
            LogRecord(
                gtrid=row["gtrid"],
                node=row["node"],
                decision=Decision(row["decision"]),
                participants=tuple(json.loads(row["participants"])),
                created=float(row["created"]),
            )
            for row in rows
        ]

    async def purge_aborts(self, older_than: float) -> int:
        """Delete abort records written more than ``older_than`` seconds ago."""
        return await self.store.execute(
            f"DELETE FROM {self.table} WHERE decision = 'abort' AND created < :cutoff",
            {"cutoff": time.time() - older_than},
        )
