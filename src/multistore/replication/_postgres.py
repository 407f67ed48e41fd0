"""PostgreSQL streaming replication: positions are WAL LSNs.

- The causal position of a write is ``pg_current_wal_insert_lsn()`` read on the same
  connection right after the commit: it is at or past the end of the commit record,
  whatever ``synchronous_commit`` says.
- A standby's position is ``pg_last_wal_replay_lsn()``; the primary's, for lag, is
  ``pg_current_wal_lsn()``.
- Failover promotes with ``pg_promote()``, repoints the other standbys by changing
  ``primary_conninfo`` (reloadable since PostgreSQL 13; the default
  ``recovery_target_timeline = latest`` makes them follow the new timeline), and fences
  the old primary when it is reachable: ``default_transaction_read_only = on`` and its
  client sessions terminated.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import ClassVar

from psycopg.conninfo import make_conninfo

from multistore.errors import StoreError
from multistore.replication._nodes import Backend, Node, ReplayState, RoutedTransaction
from multistore.replication._token import parse_lsn
from multistore.stores.relational import RelationalStore
from multistore.urls import parse_url

__all__ = ["PostgresBackend"]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class PostgresBackend(Backend):
    scheme: ClassVar[str] = "postgresql"

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
            lsn = await conn.fetch_val("SELECT pg_current_wal_insert_lsn()::text")
            scope.position = parse_lsn(lsn)

    async def primary_position(self, node: Node) -> int:
        row = await node.store.fetch_one(
            "SELECT pg_current_wal_lsn()::text AS lsn WHERE NOT pg_is_in_recovery()"
        )
        if row is None:
            raise StoreError(f"{node.name} is in recovery: it is a standby, not a primary")
        return parse_lsn(row["lsn"])

    async def replay_state(self, node: Node) -> ReplayState:
        row = await node.store.fetch_one(
            "SELECT pg_is_in_recovery() AS standby,"
            " pg_last_wal_replay_lsn()::text AS replay,"
            " pg_last_wal_receive_lsn()::text AS receive,"
            " pg_last_xact_replay_timestamp() AS replay_time,"
            " CASE WHEN pg_is_in_recovery() THEN NULL"
            " ELSE pg_current_wal_lsn()::text END AS current"
        )
        assert row is not None
        if not row["standby"]:
            position = parse_lsn(row["current"])
            return ReplayState(position, position)
        replay = parse_lsn(row["replay"]) if row["replay"] else 0
        receive = parse_lsn(row["receive"]) if row["receive"] else replay
        replay_time: dt.datetime | None = row["replay_time"]
        return ReplayState(replay, max(replay, receive), replay_time)

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

    async def fence(self, node: Node) -> None:
        await node.store.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        await node.store.execute("SELECT pg_reload_conf()")
        await node.store.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
