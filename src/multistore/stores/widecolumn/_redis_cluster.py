"""The wide-column model on Redis Cluster: a partition per hash slot.

A partition of table ``t`` lives in two keys that share one hash tag, so one slot and
one primary (and its replica) hold all its rows, and every operation on it is one Lua
script, atomic on that primary::

    {prefix}wc:{t.<incarnation>.<partition key, hex>}:z   sorted set, every member score 0
    {prefix}wc:{t.<incarnation>.<partition key, hex>}:h   hash member -> "expiry|row JSON"

A member is the order-preserving byte encoding of the row's clustering values
(:mod:`multistore.stores.widecolumn._keys`), so a clustering range is one
``ZRANGEBYLEX`` range, read forwards or backwards. A row's expiry (epoch seconds, empty
for none) travels with it; reads skip expired rows inside the script, so ``limit``
counts live rows only, and :meth:`purge_expired` removes them for good.

Schemas are fields of one hash, ``{prefix}wc:schemas``; each table gets an
*incarnation* id, so rows of a dropped table never show in a new table of the same
name (:meth:`drop_table` also deletes the old keys it finds, on every primary).

Limits: ``upsert_many`` writes each partition's rows atomically, but rows of several
partitions (several slots) are written one partition after another, not atomically
together. Redis replicates asynchronously: see the key-value store on the cluster for
``wait_replicas``, which this store does not take.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Final, Self

from multistore._redis_link import connection_error
from multistore._resp import Arg, RespConnectionError, RespError, RespScript, pack_command
from multistore._resp_cluster import RespCluster, key_slot
from multistore.errors import (
    InvalidURLError,
    InvalidValueError,
    MultistoreError,
    NotFoundError,
    Outcome,
    StoreError,
    UsageError,
)
from multistore.stores.kv._redis_lua import glob_escape
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

__all__ = ["RedisClusterWideColumnStore"]

# KEYS: z, h. ARGV: member, value, member, value, ...
_UPSERT: Final = RespScript("""
for i = 1, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], 0, ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return #ARGV / 2
""")

# KEYS: z, h. ARGV: min, max (ZRANGEBYLEX syntax), '1' for reverse, limit (0: none), now.
# The live values, in order: expired rows are skipped, so a limit counts live rows.
_SELECT: Final = RespScript("""
local lo, hi, rev = ARGV[1], ARGV[2], ARGV[3] == '1'
local limit, now = tonumber(ARGV[4]), tonumber(ARGV[5])
local out, offset, batch = {}, 0, 256
if limit > 0 and limit + 16 < batch then batch = limit + 16 end
while true do
  local ms
  if rev then
    ms = redis.call('ZREVRANGEBYLEX', KEYS[1], hi, lo, 'LIMIT', offset, batch)
  else
    ms = redis.call('ZRANGEBYLEX', KEYS[1], lo, hi, 'LIMIT', offset, batch)
  end
  if #ms == 0 then return out end
  local vs = redis.call('HMGET', KEYS[2], unpack(ms))
  for i = 1, #vs do
    local v = vs[i]
    if v then
      local bar = string.find(v, '|', 1, true)
      local x = string.sub(v, 1, bar - 1)
      if x == '' or tonumber(x) > now then
        out[#out + 1] = string.sub(v, bar + 1)
        if limit > 0 and #out >= limit then return out end
      end
    end
  end
  if #ms < batch then return out end
  offset = offset + batch
end
""")

# KEYS: z, h. ARGV: min, max. Removes the rows in the range; the number removed.
_DELETE: Final = RespScript("""
local ms = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2])
for i = 1, #ms, 1000 do
  local part = {unpack(ms, i, math.min(i + 999, #ms))}
  redis.call('ZREM', KEYS[1], unpack(part))
  redis.call('HDEL', KEYS[2], unpack(part))
end
return #ms
""")

# KEYS: z, h. ARGV: now. Removes expired rows; the number removed.
_PURGE: Final = RespScript("""
local now, n = tonumber(ARGV[1]), 0
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local v = all[i + 1]
  local x = string.sub(v, 1, string.find(v, '|', 1, true) - 1)
  if x ~= '' and tonumber(x) <= now then
    redis.call('ZREM', KEYS[1], all[i])
    redis.call('HDEL', KEYS[2], all[i])
    n = n + 1
  end
end
return n
""")


def _lex(bound: bytes | None, inclusive: bool, open_end: bytes) -> bytes:
    if bound is None:
        return open_end
    return (b"[" if inclusive else b"(") + bound


class RedisClusterWideColumnStore(WideColumnStore):
    """Wide-column tables on a Redis Cluster. See the module docstring."""

    def __init__(self, url: StoreURL, cluster: RespCluster) -> None:
        self.url = url
        self._cluster = cluster
        self._prefix = url.str_option("prefix", "")
        if "{" in self._prefix or "}" in self._prefix:
            raise InvalidURLError(
                f"prefix={self._prefix!r}: braces would change the hash slot of every key"
            )
        self._schemas_key = f"{self._prefix}wc:schemas"
        self._schemas: dict[str, tuple[TableSchema, str]] = {}
        self._closed = False

    @classmethod
    async def open(cls, url: StoreURL) -> Self:
        cluster = RespCluster.from_url(url)
        try:
            store = cls(url, cluster)
            await store._run("connect", cluster.refresh())
        except MultistoreError as exc:
            cluster.close()
            exc.outcome = Outcome.DEFINITE
            raise
        return store

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._cluster.close()

    @property
    def native(self) -> RespCluster:
        return self._cluster

    # -- plumbing --------------------------------------------------------------------

    async def _run(self, op: str, call: Any) -> Any:
        if self._closed:
            call.close()
            raise UsageError(f"the wide-column store {self.url} is closed")
        where = f"{op} on {self.url}"
        try:
            return await call
        except RespError as exc:
            raise StoreError(f"Redis error: {where}: {exc.message}") from None
        except RespConnectionError as exc:
            raise connection_error(exc, where) from exc

    async def _command(self, op: str, key: str, *parts: Arg) -> Any:
        return await self._run(op, self._cluster.call(key_slot(key), pack_command(*parts)))

    async def _script(self, op: str, script: RespScript, keys: list[str], args: list[Arg]) -> Any:
        command, fallback = script.pack(keys, args)
        return await self._run(op, self._cluster.call(key_slot(keys[0]), command, fallback))

    def _keys(self, schema: TableSchema, incarnation: str, values: Sequence[Any]) -> list[str]:
        tag = (
            f"{schema.name}.{incarnation}.{encode_key(schema, schema.partition_key, values).hex()}"
        )
        base = f"{self._prefix}wc:{{{tag}}}:"
        return [base + "z", base + "h"]

    async def _scan(self, pattern: str) -> list[bytes]:
        """Keys matching ``pattern`` on every primary."""
        found: list[bytes] = []
        for address in await self._run("scan", self._cluster.primaries()):
            cursor: Any = b"0"
            while True:
                command = pack_command("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
                cursor, batch = await self._run("scan", self._cluster.call_on(address, command))
                found.extend(bytes(k) for k in batch)
                if cursor == b"0":
                    break
        return found

    # -- tables ----------------------------------------------------------------------

    async def _load_schemas(self) -> dict[str, tuple[TableSchema, str]]:
        raw = await self._command("tables", self._schemas_key, "HGETALL", self._schemas_key)
        found: dict[str, tuple[TableSchema, str]] = {}
        for i in range(1, len(raw), 2):
            data = json.loads(raw[i])
            schema = TableSchema.from_json(data["schema"])
            found[schema.name] = (schema, data["incarnation"])
        self._schemas = found
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
        field = schema.name.lower()
        incarnation = uuid.uuid4().hex
        value = json.dumps({"schema": schema.to_json(), "incarnation": incarnation})
        key = self._schemas_key
        created = await self._command("create_table", key, "HSETNX", key, field, value)
        if not created:
            current = await self._command("create_table", key, "HGET", key, field)
            data = json.loads(current)
            check_existing(TableSchema.from_json(data["schema"]), schema, if_not_exists)
            self._schemas[schema.name] = (schema, data["incarnation"])
            return
        self._schemas[schema.name] = (schema, incarnation)

    async def drop_table(self, name: str, *, if_exists: bool = False) -> None:
        check_identifier(name, "table name")
        key = self._schemas_key
        current = await self._command("drop_table", key, "HGET", key, name.lower())
        data = json.loads(current) if current is not None else None
        self._schemas.pop(name, None)
        if data is None or data["schema"]["name"] != name:
            if if_exists:
                return
            raise NotFoundError(f"wide-column table {name!r} does not exist")
        await self._command("drop_table", key, "HDEL", key, name.lower())
        # The rows are unreachable now (another incarnation); free their memory.
        pattern = glob_escape(f"{self._prefix}wc:{{{name}.{data['incarnation']}.") + "*"
        for found in await self._scan(pattern):
            await self._run(
                "drop_table", self._cluster.call(key_slot(found), pack_command("DEL", found))
            )

    async def schema(self, name: str) -> TableSchema:
        return (await self._table(name))[0]

    async def tables(self) -> list[str]:
        return sorted(await self._load_schemas())

    # -- rows ------------------------------------------------------------------------

    async def upsert(self, table: str, row: Mapping[str, Any], *, ttl: float | None = None) -> None:
        await self.upsert_many(table, [row], ttl=ttl)

    async def upsert_many(
        self, table: str, rows: Sequence[Mapping[str, Any]], *, ttl: float | None = None
    ) -> None:
        schema, incarnation = await self._table(table)
        seconds = check_ttl(ttl)
        checked = check_rows(schema, rows)
        expiry = "" if seconds is None else repr(time.time() + seconds)
        partitions: dict[tuple[str, ...], list[Arg]] = defaultdict(list)
        clustering = schema.clustering_names
        for row in checked:
            keys = self._keys(schema, incarnation, [row[c] for c in schema.partition_key])
            member = encode_key(schema, clustering, [row[c] for c in clustering])
            value = {c: to_json(kind, row[c]) for c, kind in schema.columns.items()}
            partitions[tuple(keys)] += [member, f"{expiry}|{json.dumps(value)}"]
        for pair, args in partitions.items():
            await self._script("upsert", _UPSERT, list(pair), args)

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
        lo, hi = span
        keys = self._keys(schema, incarnation, plan.partition)
        args: list[Arg] = [
            _lex(lo, True, b"-"),
            _lex(hi, False, b"+"),
            "1" if plan.reverse else "",
            plan.limit or 0,
            repr(time.time()),
        ]
        values = await self._script("select", _SELECT, keys, args)
        return [project(plan, json.loads(raw)) for raw in values]

    async def delete(
        self,
        table: str,
        partition: Mapping[str, Any],
        clustering: Mapping[str, Any] | None = None,
    ) -> None:
        schema, incarnation = await self._table(table)
        values, prefix = plan_delete(schema, partition, clustering)
        keys = self._keys(schema, incarnation, values)
        if not prefix:
            await self._command("delete", keys[0], "DEL", *keys)
            return
        key = encode_key(schema, schema.clustering_names[: len(prefix)], prefix)
        end = successor(key)
        args: list[Arg] = [_lex(key, True, b"-"), _lex(end, False, b"+")]
        await self._script("delete", _DELETE, keys, args)

    async def purge_expired(self) -> int:
        now = repr(time.time())
        removed = 0
        for found in await self._scan(glob_escape(f"{self._prefix}wc:{{") + "*}:h"):
            text = found.decode("utf-8", errors="surrogateescape")
            keys = [text[:-1] + "z", text]
            removed += int(await self._script("purge_expired", _PURGE, keys, [now]))
        return removed
