"""The 2PC decision log on etcd (``etcd://h1:2379,h2:2379,h3:2379/?prefix=…``).

The same records as :class:`~multistore.consistency.DecisionLog` keeps in a table, as
etcd keys ``{prefix}tpc/{gtrid}`` holding JSON (node, decision, participants,
created). etcd replicates every write through Raft to a majority before it answers,
so a decision survives the loss of the coordinator's machine (and of any minority of
etcd members), and every read is linearizable.

Presumed abort works as on a table: a commit record and an abort record are each
created only if the key does not exist yet (one etcd transaction comparing the key's
create revision with 0), so a coordinator still in phase 1 and a recovery manager
cannot both win; the loser sees the decision that stands. A call that reached etcd
and got no answer raises an indeterminate :class:`~multistore.errors.StoreError`: the
decision may have been logged, and recovery settles it.

The log's id and the coordinators' node leases live in etcd too
(:class:`EtcdNodeRegistry`): a node's lease is a key attached to an etcd lease, which
etcd drops on its own when the coordinator stops renewing it (its machine died), on
etcd's clock, so coordinators and recovery runs on different machines agree on who
holds a node. A recovery run leaves a node alone while its coordinator's lease lives.

Records are written one per transaction (no group commit: etcd batches Raft entries
itself); ``forget_later`` queues deletes that go out with :meth:`flush` or the next
commit record.
"""

from __future__ import annotations

import contextlib
import json
import math
import secrets
import time
from collections.abc import Awaitable, Sequence
from typing import Any, Self, TypeVar

from multistore._etcd import EtcdClient, store_call
from multistore.consistency._tpc_log import DecisionLog, LogRecord
from multistore.consistency._tpc_nodes import NodeLease
from multistore.core._tpc import Decision, Xid
from multistore.errors import DuplicateKeyError, StoreError
from multistore.urls import StoreURL

__all__ = ["EtcdDecisionLog", "EtcdNodeRegistry"]

T = TypeVar("T")


class EtcdNodeRegistry:
    """The log id and the node leases of a decision log on etcd (the same calls as
    :class:`~multistore.consistency._tpc_nodes.NodeRegistry` makes on a table).

    ``{prefix}tpc-id`` holds the log id; ``{prefix}tpc-node/{node}`` marks a node the
    log has seen (kept after its lease ends); ``{prefix}tpc-lease/{node}`` names the
    owner and is attached to an etcd lease of ``ttl`` seconds (rounded up to whole
    seconds, etcd's unit), so it disappears when nobody renews it."""

    def __init__(self, log: EtcdDecisionLog) -> None:
        self._log = log
        self._client = log.client
        base = log.prefix[: -len("tpc/")]
        self._id_key = f"{base}tpc-id"
        self._node_prefix = f"{base}tpc-node/"
        self._lease_prefix = f"{base}tpc-lease/"

    async def _run(self, op: str, call: Awaitable[T]) -> T:
        return await self._log._run(op, call)  # type: ignore[no-any-return]

    async def log_id(self) -> str:
        """This log's id, made (once, whoever comes first) when the log is new."""
        created, standing = await self._run(
            "log id", self._client.create(self._id_key, secrets.token_hex(5))
        )
        if created or standing is None:
            found = await self._run("log id", self._client.get(self._id_key))
            assert found is not None
            return found.value.decode()
        return standing.value.decode()

    async def _holder(self, node: str) -> tuple[str, int] | None:
        found = await self._run("lease", self._client.get(self._lease_prefix + node))
        if found is None:
            return None
        data = json.loads(found.value)
        return str(data["owner"]), int(data["lease"])

    async def acquire(self, node: str, owner: str, ttl: float, *, create: bool = True) -> bool:
        """Take ``node``'s lease for ``ttl`` seconds if it is free or already ``owner``'s
        (``create``: also when the log has never seen the node). True when held now."""
        if (
            not create
            and await self._run("node", self._client.get(self._node_prefix + node)) is None
        ):
            return False
        holder = await self._holder(node)
        if holder is not None:
            if holder[0] != owner:
                return False
            if await self._run("renew", self._client.keep_alive(holder[1])) > 0:
                return True
        lease = await self._run("grant", self._client.grant(max(1, math.ceil(ttl))))
        value = json.dumps({"owner": owner, "lease": lease})
        created, _ = await self._run(
            "acquire", self._client.create(self._lease_prefix + node, value, lease=lease)
        )
        if not created:
            with contextlib.suppress(StoreError):
                await self._run("revoke", self._client.revoke(lease))
            return False
        await self._run("node", self._client.put(self._node_prefix + node, owner))
        return True

    async def renew(self, owner: str, ttl: float) -> set[str]:
        """Extend every lease ``owner`` holds; the nodes it still holds."""
        held: set[str] = set()
        for item in await self._run("renew", self._client.get_prefix(self._lease_prefix)):
            data = json.loads(item.value)
            if data["owner"] != owner:
                continue
            if await self._run("renew", self._client.keep_alive(int(data["lease"]))) > 0:
                held.add(item.key.decode()[len(self._lease_prefix) :])
        return held

    async def release(self, node: str, owner: str) -> None:
        """Give ``node``'s lease up (the log keeps knowing the node)."""
        holder = await self._holder(node)
        if holder is not None and holder[0] == owner:
            await self._run("release", self._client.revoke(holder[1]))

    async def leases(self) -> dict[str, NodeLease]:
        """Every node the log knows, with its lease (seconds left, on etcd's clock)."""
        known = await self._run("leases", self._client.get_prefix(self._node_prefix))
        found = {
            item.key.decode()[len(self._node_prefix) :]: NodeLease(
                item.key.decode()[len(self._node_prefix) :], item.value.decode(), 0.0
            )
            for item in known
        }
        for item in await self._run("leases", self._client.get_prefix(self._lease_prefix)):
            node = item.key.decode()[len(self._lease_prefix) :]
            data = json.loads(item.value)
            left = await self._run("leases", self._client.time_to_live(int(data["lease"])))
            found[node] = NodeLease(node, str(data["owner"]), float(max(left, 0)))
        return found


class EtcdDecisionLog(DecisionLog):
    """Decision records in etcd. Open with :meth:`open_url` (``DecisionLog.open`` does
    for an ``etcd://`` URL)."""

    def __init__(self, client: EtcdClient, prefix: str, url: StoreURL) -> None:
        # Not a table: none of DecisionLog's SQL state; the same public methods.
        self.client = client
        self.prefix = f"{prefix}tpc/"
        self.url = url
        self._forgotten: list[str] = []
        self.writes = 0
        self.nodes = EtcdNodeRegistry(self)  # type: ignore[assignment]
        self.log_id = ""
        self.location = url.render()

    @classmethod
    async def open_url(cls, url: StoreURL) -> Self:
        client = EtcdClient(
            [f"{h}:{p}" for h, p in url.hosts], timeout=url.float_option("timeout", 5.0)
        )
        log = cls(client, url.str_option("prefix", "/multistore/"), url)
        log.log_id = await log.nodes.log_id()  # reachable, or a clear error now
        return log

    async def close(self) -> None:
        # What is left: recovery finds nothing in doubt for those and forgets them.
        with contextlib.suppress(StoreError):
            await self.flush()

    async def _run(self, op: str, call: Any) -> Any:
        return await store_call(f"etcd decision log {self.url}: {op}", call)

    def _key(self, gtrid: str) -> str:
        return self.prefix + gtrid

    @staticmethod
    def _record(node: str, decision: str, participants: Sequence[str]) -> str:
        return json.dumps(
            {
                "node": node,
                "decision": decision,
                "participants": sorted(participants),
                "created": time.time(),
            }
        )

    async def log_commit(self, xid: Xid, participants: Sequence[str]) -> None:
        value = self._record(xid.node, "commit", participants)
        created, standing = await self._run(
            "log_commit", self.client.create(self._key(xid.gtrid), value)
        )
        self.writes += 1
        if not created:
            decision = json.loads(standing.value)["decision"] if standing else "?"
            raise DuplicateKeyError(
                f"transaction {xid.gtrid} already has a {decision} decision in {self.url}"
            )
        await self._delete_forgotten()

    def forget_later(self, xid: Xid) -> None:
        self._forgotten.append(xid.gtrid)

    async def _delete_forgotten(self) -> None:
        forgotten, self._forgotten = self._forgotten, []
        try:
            for i, gtrid in enumerate(forgotten):
                await self._run("forget", self.client.delete(self._key(gtrid)))
                forgotten[i] = ""
        finally:
            self._forgotten += [g for g in forgotten if g]

    async def flush(self) -> None:
        await self._delete_forgotten()

    async def log_abort(self, xid: Xid) -> Decision:
        value = self._record(xid.node, "abort", [])
        created, standing = await self._run(
            "log_abort", self.client.create(self._key(xid.gtrid), value)
        )
        if created or standing is None:
            return Decision.ABORT
        return Decision(json.loads(standing.value)["decision"])

    async def decision(self, xid: Xid) -> Decision | None:
        found = await self._run("decision", self.client.get(self._key(xid.gtrid)))
        return None if found is None else Decision(json.loads(found.value)["decision"])

    async def forget(self, xid: Xid) -> None:
        await self._run("forget", self.client.delete(self._key(xid.gtrid)))

    async def records(self, node: str | None = None) -> list[LogRecord]:
        found = await self._run("records", self.client.get_prefix(self.prefix))
        out = []
        for item in found:
            data = json.loads(item.value)
            if node is not None and data["node"] != node:
                continue
            out.append(
                LogRecord(
                    gtrid=item.key.decode()[len(self.prefix) :],
                    node=data["node"],
                    decision=Decision(data["decision"]),
                    participants=tuple(data["participants"]),
                    created=float(data["created"]),
                )
            )
        return sorted(out, key=lambda r: r.created)

    async def purge_aborts(self, older_than: float) -> int:
        cutoff = time.time() - older_than
        removed = 0
        for record in await self.records():
            if record.decision is Decision.ABORT and record.created < cutoff:
                removed += await self._run(
                    "purge_aborts", self.client.delete(self._key(record.gtrid))
                )
        return removed
