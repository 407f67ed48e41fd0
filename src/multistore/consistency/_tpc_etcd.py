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

Records are written one per transaction (no group commit: etcd batches Raft entries
itself); ``forget_later`` queues deletes that go out with :meth:`flush` or the next
commit record.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from typing import Any, Self

from multistore._etcd import EtcdClient, EtcdError
from multistore.consistency._tpc_log import DecisionLog, LogRecord
from multistore.core._tpc import Decision, Xid
from multistore.errors import DuplicateKeyError, Outcome, StoreError, StoreUnavailableError
from multistore.urls import StoreURL

__all__ = ["EtcdDecisionLog"]


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

    @classmethod
    async def open_url(cls, url: StoreURL) -> Self:
        client = EtcdClient(
            [f"{h}:{p}" for h, p in url.hosts], timeout=url.float_option("timeout", 5.0)
        )
        log = cls(client, url.str_option("prefix", "/multistore/"), url)
        await log._run("open", client.get(log.prefix))  # reachable, or a clear error now
        return log

    async def close(self) -> None:
        # What is left: recovery finds nothing in doubt for those and forgets them.
        with contextlib.suppress(StoreError):
            await self.flush()

    async def _run(self, op: str, call: Any) -> Any:
        try:
            return await call
        except EtcdError as exc:
            outcome = Outcome.INDETERMINATE if exc.sent else Outcome.DEFINITE
            raise StoreUnavailableError(
                f"etcd decision log {self.url}: {op}: {exc}", outcome=outcome
            ) from exc

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
