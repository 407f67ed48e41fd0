"""The wide-column model on a quorum cluster (Cassandra's design, on our nodes).

A partition is one *group* on the ring, so all its rows live on the same N
replicas; a row is a record of that group whose *member* is an order-preserving
byte encoding of its clustering values (each column ascending or descending, as
declared), so every node keeps a partition's rows in clustering order — a Redis
sorted set read with ``ZRANGEBYLEX``, or a SQLite primary key — and a range read
is one contiguous scan on each replica, merged by the coordinator. Rows are
last-writer-wins by HLC per row (Cassandra's cell timestamps, at row
granularity); a delete writes tombstones; a TTL travels with the row as an
absolute expiry time, so any replica hides an expired row by itself.

Schemas are records of a reserved group, written at ALL available and read at
the read level; each table gets an *incarnation* id, so rows of a dropped table
never reappear in a new table of the same name.

Consistency is per request: ``store.with_consistency(r=..., w=...)`` returns a
view of the same cluster with other levels (ONE, QUORUM, ALL or counts).

Limits: ``upsert_many`` checks every row first, then writes the rows
concurrently — not atomically across rows (Cassandra's unlogged batch); a
partition delete tombstones the rows a read at the read level finds.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final, Self

from multistore.core._quorum import Consistency, Level
from multistore.core._ring import RING_SIZE
from multistore.errors import (
    InvalidValueError,
    MultistoreError,
    NotFoundError,
    Outcome,
)
from multistore.replication._qnodes import parse_entry
from multistore.replication._quorum import (
    TOMBSTONE,
    QuorumCluster,
    QuorumError,
    ReadResult,
    decode_set,
)
from multistore.replication._qurl import open_cluster, parse_quorum_url
from multistore.stores.widecolumn._api import (
    Condition,
    Order,
    TableSchema,
    WideColumnStore,
    check_identifier,
)
from multistore.stores.widecolumn._keys import (
    encode_key,
    key_range,
    project,
    successor,
    to_json,
)
from multistore.stores.widecolumn._query import (
    check_existing,
    check_rows,
    check_ttl,
    plan_delete,
    plan_select,
)
from multistore.urls import StoreURL

__all__ = ["QuorumWideColumnStore", "encode_key", "parse_quorum_url"]

_SCHEMAS: Final = b"\x00wc-schemas"
_CONCURRENCY: Final = 64


class QuorumWideColumnStore(WideColumnStore):
    """:class:`WideColumnStore` on a :class:`QuorumCluster`; see the module docstring."""

    def __init__(
        self,
        cluster: QuorumCluster,
        *,
        url: StoreURL | None = None,
        r: Level | None = None,
        w: Level | None = None,
        owns_cluster: bool = True,
    ) -> None:
        self.url = url if url is not None else StoreURL(scheme="quorum")
        self.cluster = cluster
        self.r = r
        self.w = w
        self._owns = owns_cluster
        self._schemas: dict[str, tuple[TableSchema, str]] = {}

    # -- opening --------------------------------------------------------------------------

    @classmethod
    async def open(cls, url: StoreURL) -> Self:
        """The store on the cluster a ``quorum://`` URL describes (see
        :mod:`._qurl`: embedded nodes in a folder, or Redis servers)."""
        return cls(await open_cluster(url), url=url)

    @classmethod
    async def open_url(cls, text: str) -> Self:
        """Open from a ``quorum://`` string (until the registry knows the scheme)."""
        return await cls.open(parse_quorum_url(text))

    async def close(self) -> None:
        if self._owns:
            await self.cluster.close()
        else:
            await self.cluster.wait_background()

    @property
    def native(self) -> QuorumCluster:
        """The :class:`QuorumCluster` the tables live on."""
        return self.cluster

    def with_consistency(self, *, r: Level | None = None, w: Level | None = None) -> Self:
        """A view of the same tables that reads at ``r`` and writes at ``w``."""
        view = type(self)(
            self.cluster,
            url=self.url,
            r=self.r if r is None else r,
            w=self.w if w is None else w,
            owns_cluster=False,
        )
        view._schemas = self._schemas
        return view

    # -- tables ---------------------------------------------------------------------------

    async def _load_schemas(self) -> dict[str, tuple[TableSchema, str]]:
        rows = await self._scan_all(_SCHEMAS, None, None)
        found: dict[str, tuple[TableSchema, str]] = {}
        for _, result in rows:
            data = result.value
            schema = TableSchema.from_json(data["schema"])
            found[schema.name] = (schema, data["incarnation"])
        self._schemas.clear()
        self._schemas.update(found)
        return found

    async def _table(self, name: str) -> tuple[TableSchema, str]:
        check_identifier(name, "table name")
        entry = self._schemas.get(name)
        if entry is None:
            entry = (await self._load_schemas()).get(name)
        if entry is None:
            raise NotFoundError(f"wide-column table {name!r} does not exist")
        return entry

    async def create_table(self, schema: TableSchema, *, if_not_exists: bool = True) -> None:
        if not isinstance(schema, TableSchema):
            raise InvalidValueError(f"create_table takes a TableSchema, not {schema!r}")
        member = schema.name.lower().encode()
        current = await self.cluster.get_record(_SCHEMAS, member, r=self.r)
        if current.found:
            existing = TableSchema.from_json(current.value["schema"])
            check_existing(existing, schema, if_not_exists)
            self._schemas[schema.name] = (existing, current.value["incarnation"])
            return
        incarnation = uuid.uuid4().hex
        value = {"schema": schema.to_json(), "incarnation": incarnation}
        await self.cluster.put_record(_SCHEMAS, member, {"v": value}, w=self._schema_w())
        self._schemas[schema.name] = (schema, incarnation)

    def _schema_w(self) -> Level:
        return self.w if self.w is not None else Consistency.QUORUM

    async def drop_table(self, name: str, *, if_exists: bool = False) -> None:
        check_identifier(name, "table name")
        member = name.lower().encode()
        current = await self.cluster.get_record(_SCHEMAS, member, r=self.r)
        if not current.found or current.value["schema"]["name"] != name:
            self._schemas.pop(name, None)
            if if_exists:
                return
            raise NotFoundError(f"wide-column table {name!r} does not exist")
        await self.cluster.put_record(
            _SCHEMAS, member, TOMBSTONE, w=self._schema_w(), context=current.context
        )
        self._schemas.pop(name, None)

    async def schema(self, name: str) -> TableSchema:
        return (await self._table(name))[0]

    async def tables(self) -> list[str]:
        return sorted(await self._load_schemas())

    # -- rows -------------------------------------------------------------------------------

    @staticmethod
    def _group(schema: TableSchema, incarnation: str, values: Sequence[Any]) -> bytes:
        key = encode_key(schema, schema.partition_key, values)
        return f"t:{schema.name}:{incarnation}:".encode() + key

    async def upsert(self, table: str, row: Mapping[str, Any], *, ttl: float | None = None) -> None:
        await self.upsert_many(table, [row], ttl=ttl)

    async def upsert_many(
        self, table: str, rows: Sequence[Mapping[str, Any]], *, ttl: float | None = None
    ) -> None:
        schema, incarnation = await self._table(table)
        seconds = check_ttl(ttl)
        checked = check_rows(schema, rows)
        expires = None if seconds is None else time.time() + seconds
        writes = []
        for row in checked:
            group = self._group(schema, incarnation, [row[c] for c in schema.partition_key])
            member = encode_key(
                schema, schema.clustering_names, [row[c] for c in schema.clustering_names]
            )
            payload = {
                "v": {c: to_json(kind, row[c]) for c, kind in schema.columns.items()},
                "x": expires,
            }
            writes.append((group, member, payload))
        await self._write_all(writes)

    async def _write_all(self, writes: list[tuple[bytes, bytes, Any]]) -> None:
        gate = asyncio.Semaphore(_CONCURRENCY)

        async def one(group: bytes, member: bytes, payload: Any) -> None:
            async with gate:
                await self.cluster.put_record(group, member, payload, w=self.w)

        results = await asyncio.gather(*(one(*w) for w in writes), return_exceptions=True)
        failed = [result for result in results if isinstance(result, BaseException)]
        if not failed:
            return
        first = failed[0]
        errors = [error for error in failed if isinstance(error, MultistoreError)]
        if (
            len(errors) == len(failed)
            and errors[0].definite
            and (len(failed) < len(results) or not all(error.definite for error in errors))
        ):
            # The rows are written independently: one refused definitely does not make
            # the whole write definite when others were (or may have been) written.
            raise QuorumError(
                f"{len(results) - len(failed)} of {len(results)} rows were written, "
                f"{len(failed)} failed (not atomic: Cassandra's unlogged batch): {first}",
                acks=(),
                required=0,
                outcome=Outcome.INDETERMINATE,
            ) from first
        raise first

    async def _scan_all(
        self,
        group: bytes,
        lo: bytes | None,
        hi: bytes | None,
        *,
        reverse: bool = False,
        limit: int | None = None,
    ) -> list[tuple[bytes, ReadResult]]:
        """Live records of a group, asking again with a larger limit when tombstones or
        expired rows used up a replica's answer."""
        now = time.time()
        ask = None if limit is None else limit + 8
        while True:
            rows, truncated = await self.cluster.scan_records(
                group, lo, hi, reverse=reverse, limit=ask, r=self.r
            )
            live = [
                (row.member, row.result)
                for row in rows
                if row.result.found and not _expired(row.result, now)
            ]
            if limit is None or len(live) >= limit or not truncated:
                return live if limit is None else live[:limit]
            assert ask is not None
            ask *= 4

    async def select(
        self,
        table: str,
        partition: Mapping[str, Any],
        *,
        where: Sequence[Condition] = (),
        order: Order | None = None,
        limit: int | None = None,
        columns: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        schema, incarnation = await self._table(table)
        plan = plan_select(schema, partition, where, order, limit, columns)
        span = key_range(plan)
        if span is None:
            return []
        group = self._group(schema, incarnation, plan.partition)
        rows = await self._scan_all(group, *span, reverse=plan.reverse, limit=plan.limit)
        return [project(plan, result.value) for _, result in rows]

    async def delete(
        self,
        table: str,
        partition: Mapping[str, Any],
        clustering: Mapping[str, Any] | None = None,
    ) -> None:
        schema, incarnation = await self._table(table)
        values, prefix = plan_delete(schema, partition, clustering)
        group = self._group(schema, incarnation, values)
        key = encode_key(schema, schema.clustering_names[: len(prefix)], prefix)
        lo, hi = (key, successor(key)) if key else (None, None)
        rows = await self._scan_all(group, lo, hi)
        await self._write_all([(group, member, TOMBSTONE) for member, _ in rows])

    async def purge_expired(self) -> int:
        """Remove expired rows for good; the number of rows removed.

        A row goes only once every replica of its partition answers and holds the
        expired version: a replica that missed it still holds what it overwrote,
        which read repair or anti-entropy would otherwise bring back once the
        expired version is gone everywhere else. So the expired version is first
        written to the replicas that lack it (and this coordinator's hints are
        delivered); a row with a replica down waits for a later purge."""
        cluster = self.cluster
        now = time.time()
        await cluster.deliver_hints()
        found: set[tuple[bytes, bytes]] = set()
        for name in cluster.nodes:
            try:
                entries = await cluster.call_node(name, lambda n: n.entries(0, RING_SIZE - 1))
            except MultistoreError:
                continue  # its rows are purged once it answers (their replicas must)
            found.update(
                (group, member)
                for group, member in map(parse_entry, (entry for entry, _ in entries))
                if group.startswith(b"t:")
            )
        removed = 0
        for group, member in sorted(found):
            try:
                removed += await self._purge_row(group, member, now)
            except MultistoreError:
                continue  # kept for a later purge
        return removed

    async def _purge_row(self, group: bytes, member: bytes, now: float) -> bool:
        """Remove one row from its replicas if its newest version expired (see
        :meth:`purge_expired`); True if some replica removed it."""
        cluster = self.cluster
        homes = cluster.preference_list(group)
        held = {
            name: await cluster.call_node(name, lambda n: n.read(group, member)) for name in homes
        }
        records = [record for record in held.values() if record is not None]
        if not records:
            return False
        target = cluster.target_record(records)
        newest = decode_set(target[1]).newest
        if newest is None or newest.value == TOMBSTONE:
            return False
        expires = newest.value.get("x")
        if expires is None or expires > now:
            return False
        hlc, blob = target
        for name, record in held.items():
            if record != target:
                await cluster.call_node(
                    name, lambda n: cluster.apply_record(n, group, member, hlc, blob)
                )
        gone = False
        for name in homes:
            # only what was read: a write that came in meanwhile stays
            gone |= await cluster.call_node(
                name, lambda n: n.remove(group, member, expected=target)
            )
        return gone


def _expired(result: ReadResult, now: float) -> bool:
    expires = result.versions[0].value.get("x")
    return expires is not None and expires <= now
