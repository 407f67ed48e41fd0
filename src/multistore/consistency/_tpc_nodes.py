"""The decision log's identity and its coordinator nodes, held as leases.

A decision log gets an id when it is created (:data:`LOG_ID_TABLE`, ten hex digits),
and every branch id a coordinator writes names it (``ms2pc:<node>.<log>:…``), so a
recovery run knows which in-doubt branches the log it reads can decide.

Each coordinator node id is a row of :data:`NODES_TABLE` in the log: an owner token
and an expiry. A live coordinator holds its node's lease and renews it; a second
coordinator cannot take a node id whose lease is live, and a recovery run acts on a
node's branches only while it holds that node's lease (or is its own coordinator), so
it never races a live coordinator. A lease that ran out (its coordinator crashed, or
closed) is free: a recovery run, or another coordinator, takes it over, finishes the
node's in-doubt transactions and lets it go again. The row stays (released, expiry 0),
so the log knows the node; that is how ids written before logs had ids are told apart.

Time comes from the log's database where it has a clock (PostgreSQL
``clock_timestamp()``, MariaDB ``NOW(6)``), so coordinators on machines with skewed
clocks agree on who holds what; on SQLite (one machine) from ``time.time()``.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any, Final

from multistore.errors import ConflictError, DuplicateKeyError
from multistore.stores.relational import RelationalStore

__all__ = [
    "LOG_ID_TABLE",
    "NODES_TABLE",
    "NodeBusyError",
    "NodeLease",
    "NodeRegistry",
    "new_owner",
]

LOG_ID_TABLE: Final = "multistore_tpc_log_id"
NODES_TABLE: Final = "multistore_tpc_nodes"

SCHEMA: Final = (
    f"CREATE TABLE IF NOT EXISTS {LOG_ID_TABLE} "
    "(one INT PRIMARY KEY, log_id VARCHAR(16) NOT NULL);"
    f"CREATE TABLE IF NOT EXISTS {NODES_TABLE} ("
    "node VARCHAR(24) PRIMARY KEY, owner VARCHAR(120) NOT NULL, "
    "expires DOUBLE PRECISION NOT NULL, renewed DOUBLE PRECISION NOT NULL)"
)


class NodeBusyError(ConflictError):
    """A coordinator node id whose lease another live process holds."""


def new_owner(role: str = "coordinator") -> str:
    """A lease owner token: unique, and readable in messages (what holds it: a
    ``coordinator`` or a ``recovery`` run; host; process)."""
    return f"{role} {socket.gethostname()[:50]}:{os.getpid()}:{secrets.token_hex(6)}"


@dataclass(frozen=True)
class NodeLease:
    """One node id's row: who holds it and for how much longer (seconds, <= 0: free)."""

    node: str
    owner: str
    remaining: float

    @property
    def live(self) -> bool:
        return self.remaining > 0

    def describe(self) -> str:
        role, _, where = self.owner.rpartition(":")[0].partition(" ")
        holder = "a recovery run" if role == "recovery" else "a live coordinator"
        return f"node {self.node!r} is held by {holder} ({where}) for {self.remaining:.1f} s more"


class NodeRegistry:
    """The log id and the node leases, in the decision log's store."""

    def __init__(self, store: RelationalStore) -> None:
        self.store = store
        scheme = store.url.scheme
        if scheme == "postgresql":
            self._now = "extract(epoch FROM clock_timestamp())::float8"
        elif scheme == "mariadb":
            self._now = "UNIX_TIMESTAMP(NOW(6))"
        else:
            self._now = ":now"
        self._ignore = (
            "INSERT IGNORE INTO {} " if scheme == "mariadb" else "INSERT INTO {} "
        ).format
        self._or_nothing = "" if scheme == "mariadb" else " ON CONFLICT DO NOTHING"

    def _params(self, **values: Any) -> dict[str, Any]:
        return {"now": time.time(), **values}

    async def log_id(self) -> str:
        """This log's id, made (once, whoever comes first) when the log is new."""
        await self.store.execute(
            self._ignore(LOG_ID_TABLE) + "(one, log_id) VALUES (1, :id)" + self._or_nothing,
            {"id": secrets.token_hex(5)},
        )
        return str(await self.store.fetch_val(f"SELECT log_id FROM {LOG_ID_TABLE} WHERE one = 1"))

    async def acquire(self, node: str, owner: str, ttl: float, *, create: bool = True) -> bool:
        """Take ``node``'s lease for ``ttl`` seconds if it is free or already ``owner``'s
        (``create``: also when the log has never seen the node). True when held now."""
        taken = await self.store.execute(
            f"UPDATE {NODES_TABLE} SET owner = :owner, expires = {self._now} + :ttl, "
            f"renewed = {self._now} "
            f"WHERE node = :node AND (owner = :owner OR expires <= {self._now})",
            self._params(node=node, owner=owner, ttl=ttl),
        )
        if taken or not create:
            return bool(taken)
        try:
            return bool(
                await self.store.execute(
                    f"INSERT INTO {NODES_TABLE} (node, owner, expires, renewed) "
                    f"VALUES (:node, :owner, {self._now} + :ttl, {self._now})",
                    self._params(node=node, owner=owner, ttl=ttl),
                )
            )
        except DuplicateKeyError:
            return False  # another process inserted it first: its lease is live

    async def renew(self, owner: str, ttl: float) -> set[str]:
        """Extend every lease ``owner`` holds; the nodes it still holds."""
        await self.store.execute(
            f"UPDATE {NODES_TABLE} SET expires = {self._now} + :ttl, renewed = {self._now} "
            "WHERE owner = :owner AND expires > 0",
            self._params(owner=owner, ttl=ttl),
        )
        rows = await self.store.fetch_all(
            f"SELECT node FROM {NODES_TABLE} WHERE owner = :owner AND expires > 0",
            {"owner": owner},
        )
        return {str(row["node"]) for row in rows}

    async def release(self, node: str, owner: str) -> None:
        """Give ``node``'s lease up (the row stays: the log keeps knowing the node)."""
        await self.store.execute(
            f"UPDATE {NODES_TABLE} SET expires = 0 WHERE node = :node AND owner = :owner",
            {"node": node, "owner": owner},
        )

    async def leases(self) -> dict[str, NodeLease]:
        """Every node the log knows, with its lease."""
        rows = await self.store.fetch_all(
            f"SELECT node, owner, expires - {self._now} AS remaining FROM {NODES_TABLE}",
            self._params(),
        )
        return {
            str(row["node"]): NodeLease(
                str(row["node"]), str(row["owner"]), float(row["remaining"])
            )
            for row in rows
        }
