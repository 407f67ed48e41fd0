"""PostgreSQL streaming replication: positions are WAL LSNs, timelines PostgreSQL's.

- The causal position of a write is ``pg_current_wal_insert_lsn()`` read on the same
  connection right after the commit: it is at or past the end of the commit record,
  whatever ``synchronous_commit`` says. The primary's position, for lag, is read the
  same way; a standby's position is ``pg_last_wal_replay_lsn()``. Where the last
  record ends exactly at a WAL page boundary, the insert position points past the
  next page's header while a standby's replay position stops at the boundary; such
  positions are moved back to the boundary, so a caught-up standby matches them.
- The primary's timeline is the one in the name of its current WAL file
  (``pg_walfile_name()``, exact from the moment a promotion completes, unlike
  ``pg_control_checkpoint()``, which waits for the next checkpoint); where its
  ancestors ended comes from the timeline's history file, read with
  ``pg_read_file('pg_wal/0000000N.history')`` over the ordinary connection (the
  replication protocol's ``TIMELINE_HISTORY`` says the same, but needs a replication
  connection and its ``pg_hba.conf`` entry). A standby's timeline is the one its WAL
  receiver streams (``pg_stat_wal_receiver.received_tli``).
- Failover promotes with ``pg_promote()``, repoints the other standbys by changing
  ``primary_conninfo`` (reloadable since PostgreSQL 13; the default
  ``recovery_target_timeline = latest`` makes them follow the new timeline).
- Fencing demotes and stops the old primary before anything is promoted: one
  ``COPY … TO PROGRAM`` creates ``standby.signal`` in its data directory and sends the
  postmaster SIGINT (a fast shutdown: open transactions roll back, sessions end, the
  WAL written so far goes to the standbys). No client setting can undo that: nothing
  connects until someone restarts the server, and then it starts as a read-only hot
  standby. ``default_transaction_read_only`` is not a fence: ``BEGIN READ WRITE``
  overrides it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import ClassVar

import psycopg
from psycopg.conninfo import make_conninfo

from multistore.errors import ConfigError, InvalidQueryError, StoreError, StoreUnavailableError
from multistore.replication._nodes import Backend, Node, ReplayState, Role, RoutedTransaction
from multistore.replication._timeline import Timeline
from multistore.replication._token import parse_lsn
from multistore.stores.relational import RelationalStore
from multistore.urls import parse_url

__all__ = ["PostgresBackend", "parse_history"]

_SHORT_PAGE_HEADER = 24
_LONG_PAGE_HEADER = 40
"""Sizes of a WAL page header, and of the longer one opening each segment."""

FENCE_STOP_TIMEOUT = 10.0
"""How long a fenced primary may take to stop accepting connections."""

_DEMOTE_AND_STOP = (
    "COPY (SELECT WHERE false) TO PROGRAM"
    " 'touch standby.signal && kill -INT \"$(head -n 1 postmaster.pid)\"'"
)
"""Run by the server in its data directory: demote on next start, fast shutdown now."""


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def parse_history(text: str) -> dict[int, int]:
    """The ancestors in a PostgreSQL timeline history file: timeline -> the LSN where
    it ended. Lines are ``parentTLI<tab>switchpoint<tab>reason``; ``#`` starts a
    comment."""
    ends: dict[int, int] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            ends[int(fields[0], 10)] = parse_lsn(fields[1])
        except ValueError:
            raise StoreError(f"unreadable timeline history line: {line[:80]!r}") from None
    return ends


class PostgresBackend(Backend):
    scheme: ClassVar[str] = "postgresql"

    def __init__(self) -> None:
        self._wal_block = 8192
        self._wal_segment = 16 * 1024 * 1024

    async def prepare(self, node: Node) -> None:
        if node.role is Role.PRIMARY:
            row = await node.store.fetch_one(
                "SELECT current_setting('wal_block_size')::int AS block,"
                " (SELECT setting::bigint FROM pg_settings"
                "  WHERE name = 'wal_segment_size') AS segment"
            )
            assert row is not None
            self._wal_block, self._wal_segment = int(row["block"]), int(row["segment"])

    def _record_end(self, insert_lsn: str) -> int:
        """An insert position as the end of the last record (see the module notes)."""
        lsn = parse_lsn(insert_lsn)
        if lsn % self._wal_segment == _LONG_PAGE_HEADER:
            return lsn - _LONG_PAGE_HEADER
        if lsn % self._wal_block == _SHORT_PAGE_HEADER:
            return lsn - _SHORT_PAGE_HEADER
        return lsn

    @asynccontextmanager
    async def write_scope(
        self, store: RelationalStore, *, transaction: bool
    ) -> AsyncIterator[RoutedTransaction]:
        async with store.connection() as conn:
            if transaction:
                async with conn.transaction() as tx:
                    scope = RoutedTransaction(tx, self)
                    yield scope
            else:
                scope = RoutedTransaction(conn, self)
                yield scope
            scope.observed_at = time.monotonic()
            lsn = await conn.fetch_val("SELECT pg_current_wal_insert_lsn()::text")
            scope.position = self._record_end(lsn)

    async def primary_position(self, node: Node) -> int:
        row = await node.store.fetch_one(
            "SELECT pg_current_wal_insert_lsn()::text AS lsn WHERE NOT pg_is_in_recovery()"
        )
        if row is None:
            raise StoreError(f"{node.name} is in recovery: it is a standby, not a primary")
        return self._record_end(row["lsn"])

    async def timeline(self, node: Node) -> Timeline:
        walfile = await node.store.fetch_val(
            "SELECT CASE WHEN pg_is_in_recovery() THEN NULL"
            " ELSE pg_walfile_name(pg_current_wal_lsn()) END"
        )
        if walfile is None:
            raise StoreError(f"{node.name} is in recovery: it is a standby, not a primary")
        current = int(walfile[:8], 16)
        if current == 1:
            return Timeline(1, {}, lsn=True)
        try:
            text = await node.store.fetch_val(
                "SELECT pg_read_file(:path)", {"path": f"pg_wal/{current:08X}.history"}
            )
        except InvalidQueryError as exc:  # permission denied
            raise ConfigError(
                f"cannot read the history of timeline {current} on {node.name}; the router's "
                f"user needs GRANT EXECUTE ON FUNCTION pg_read_file(text): {exc}"
            ) from exc
        return Timeline(current, parse_history(text), lsn=True)

    async def replay_state(self, node: Node) -> ReplayState:
        row = await node.store.fetch_one(
            "SELECT pg_is_in_recovery() AS standby,"
            " pg_last_wal_replay_lsn()::text AS replay,"
            " pg_last_wal_receive_lsn()::text AS receive,"
            " pg_last_xact_replay_timestamp() AS replay_time,"
            " CASE WHEN pg_is_in_recovery()"
            "  THEN (SELECT received_tli FROM pg_stat_wal_receiver)::text"
            "  ELSE pg_walfile_name(pg_current_wal_lsn()) END AS tli,"
            " CASE WHEN pg_is_in_recovery() THEN NULL"
            "  ELSE pg_current_wal_insert_lsn()::text END AS current"
        )
        assert row is not None
        if not row["standby"]:
            position = self._record_end(row["current"])
            return ReplayState(position, position, timeline=int(row["tli"][:8], 16))
        replay = parse_lsn(row["replay"]) if row["replay"] else 0
        receive = parse_lsn(row["receive"]) if row["receive"] else replay
        replay_time: dt.datetime | None = row["replay_time"]
        timeline = int(row["tli"]) if row["tli"] else None
        return ReplayState(replay, max(replay, receive), replay_time, timeline)

    async def promote(self, node: Node) -> None:
        promoted = await node.store.fetch_val("SELECT pg_promote(true, 60)")
        standby = await node.store.fetch_val("SELECT pg_is_in_recovery()")
        if not promoted or standby:
            raise StoreError(f"pg_promote() did not promote {node.name} within 60 s")

    async def repoint(self, node: Node, primary: Node) -> None:
        url = parse_url(primary.url)
        conninfo = make_conninfo(
            "",
            host=url.host,
            port=url.port,
            user=url.username or "postgres",
            password=url.password,
            application_name=node.name.replace(":", "_"),
        )
        await node.store.execute(f"ALTER SYSTEM SET primary_conninfo = {_literal(conninfo)}")
        await node.store.execute("SELECT pg_reload_conf()")

    async def fence(self, node: Node) -> int | None:
        """Demote and stop ``node``: the WAL insert position it had just before (None
        when it already was a standby, which takes no writes)."""
        conninfo = _conninfo(node)
        try:
            conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise StoreUnavailableError(f"cannot reach {node.name} to fence it: {exc}") from exc
        try:
            cur = await conn.execute(
                "SELECT pg_is_in_recovery(), pg_current_wal_insert_lsn()::text"
            )
            row = await cur.fetchone()
            assert row is not None
            if row[0]:
                return None
            final = self._record_end(row[1])
            try:
                await conn.execute(_DEMOTE_AND_STOP)
            except psycopg.OperationalError:
                pass  # the shutdown may end this very session before it answers
            except psycopg.Error as exc:
                raise StoreError(
                    f"could not demote and stop {node.name} (fencing needs a superuser or "
                    f"the pg_execute_server_program role): {exc}"
                ) from exc
        except psycopg.OperationalError as exc:
            raise StoreUnavailableError(f"lost {node.name} while fencing it: {exc}") from exc
        finally:
            await conn.close()
        await _wait_stopped(node, conninfo)
        return final


def _conninfo(node: Node) -> str:
    url = parse_url(node.url)
    return make_conninfo(
        "",
        host=url.host,
        port=url.port,
        user=url.username or "postgres",
        password=url.password,
        dbname=url.database or "postgres",
        connect_timeout=max(2, round(url.float_option("connect_timeout", 5.0))),
        application_name="multistore-fence",
    )


async def _wait_stopped(node: Node, conninfo: str) -> None:
    """Return once ``node`` refuses connections, says it is shutting down, or answers
    as a standby; :class:`StoreUnavailableError` when it cannot tell (no answer)."""
    deadline = time.monotonic() + FENCE_STOP_TIMEOUT
    delay = 0.01
    while True:
        conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
        try:
            conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
        except psycopg.OperationalError as exc:
            if exc.sqlstate == "57P03" or "refused" in str(exc).lower():
                return  # shutting down, or stopped
            error = str(exc)
        else:
            try:
                cur = await conn.execute("SELECT pg_is_in_recovery()")
                row = await cur.fetchone()
                if row is not None and row[0]:
                    return
                error = "it still runs as a primary"
            except psycopg.OperationalError:
                return  # the shutdown ended the session
            finally:
                await conn.close()
        if time.monotonic() > deadline:
            cls = StoreError if conn is not None else StoreUnavailableError
            raise cls(
                f"{node.name} was told to shut down, but after {FENCE_STOP_TIMEOUT:g} s "
                f"that is not confirmed: {error}"
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.2)
