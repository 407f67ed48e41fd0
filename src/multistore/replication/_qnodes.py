"""Quorum nodes: the storage a coordinator replicates to, one interface, two backends.

A node stores *records*: ``(group, member) -> (hlc, blob)``. The group is what the
ring places (a key, or a wide-column partition); members order the records of a
group (empty for a plain key; an order-preserving clustering encoding for rows),
so a node can return one group's records in order, which is what range reads of
the wide-column model need. ``hlc`` is the text form of the record's newest HLC
timestamp (its lexicographic order is time order) and ``blob`` the JSON the
coordinator wrote (a sibling set).

Every write is atomic on the node: :meth:`QuorumNode.write_lww` keeps the record
with the greater HLC, :meth:`QuorumNode.write_cas` replaces the record only if it
still is what the caller read (for resolvers that merge siblings). Each node also
keeps, per record, an *entry* name ``<token hex><group hex>:<member hex>`` and a
SHA-1 digest of the stored value, ordered by token, from which
:meth:`QuorumNode.leaf_hashes` computes Merkle leaves *on the node* (a Lua script
on Redis): anti-entropy sends leaf hashes, not data.

* :class:`RedisNode` — a Redis server; each operation is one round trip (a Lua
  script where it must be atomic). URL ``redis://host:port/db?prefix=...``.
* :class:`SQLiteNode` — an embedded SQLite file on a worker thread, with
  :meth:`SQLiteNode.set_down` / :meth:`SQLiteNode.set_delay` to simulate a crashed
  or slow node.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import hashlib
import sqlite3
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

if TYPE_CHECKING:  # redis is an optional extra, imported when a RedisNode is made
    import redis.asyncio as aioredis

from multistore.core._merkle import leaf_hash
from multistore.core._ring import token_of
from multistore.errors import StoreError, StoreTimeoutError, StoreUnavailableError, UsageError
from multistore.stores._worker import Worker

__all__ = ["QuorumNode", "Record", "RedisNode", "SQLiteNode", "entry_name", "parse_entry"]

T = TypeVar("T")

Record = tuple[str, bytes]
"""``(hlc text, blob)`` as stored on a node."""


@functools.lru_cache(maxsize=4096)  # every replica write of a record needs it
def entry_name(group: bytes, member: bytes) -> str:
    """The anti-entropy index name of a record; sorts by the group's ring token."""
    return f"{token_of(group):016x}{group.hex()}:{member.hex()}"


def parse_entry(entry: str) -> tuple[bytes, bytes]:
    body, _, member = entry[16:].partition(":")
    return bytes.fromhex(body), bytes.fromhex(member)


def _pack(hlc: str, blob: bytes) -> bytes:
    return hlc.encode() + b"\n" + blob


def _unpack(value: bytes) -> Record:
    hlc, _, blob = value.partition(b"\n")
    return hlc.decode(), blob


def _digest(value: bytes) -> str:
    return hashlib.sha1(value, usedforsecurity=False).hexdigest()


def _token_hex_bounds(lo: int, hi: int) -> tuple[str, str]:
    """Entry-name bounds ``[lo_hex, hi_hex + "g")`` covering tokens lo..hi ('g' > hex)."""
    return f"{lo:016x}", f"{hi:016x}g"


class QuorumNode(abc.ABC):
    """One storage node of a quorum cluster (see the module docstring)."""

    name: str
    deadline: float | None = None
    """Seconds after which the node itself fails any one call with StoreTimeoutError
    (None: it sets no deadline; the coordinator's timeout still applies)."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StoreUnavailableError/StoreTimeoutError unless the node answers."""

    @abc.abstractmethod
    async def read(self, group: bytes, member: bytes = b"") -> Record | None: ...

    @abc.abstractmethod
    async def write_lww(self, group: bytes, member: bytes, hlc: str, blob: bytes) -> bool:
        """Store the record unless the node holds one with an HLC >= ``hlc``; True if stored."""

    @abc.abstractmethod
    async def write_cas(
        self, group: bytes, member: bytes, hlc: str, blob: bytes, expected: Record | None
    ) -> bool:
        """Store the record if the node still holds ``expected`` (None: nothing); True if so."""

    @abc.abstractmethod
    async def scan(
        self,
        group: bytes,
        lo: bytes | None,
        hi: bytes | None,
        *,
        reverse: bool = False,
        limit: int | None = None,
    ) -> list[tuple[bytes, Record]]:
        """Records of ``group`` with ``lo <= member < hi`` (None: unbounded), in member
        order (reversed when asked), at most ``limit``."""

    @abc.abstractmethod
    async def remove(self, group: bytes, member: bytes = b"") -> None:
        """Forget a record entirely (hint cleanup on a fallback, purging expired rows)."""

    @abc.abstractmethod
    async def leaf_hashes(self, arcs: Sequence[tuple[int, int]], depth: int) -> dict[int, str]:
        """Merkle leaf hashes (depth a multiple of 4) of the records in the token ranges."""

    @abc.abstractmethod
    async def entries(self, lo: int, hi: int) -> list[tuple[str, str]]:
        """``(entry name, digest)`` of the records with group tokens in ``[lo, hi]``."""

    @abc.abstractmethod
    async def wipe(self) -> None:
        """Delete every record of this node (to show anti-entropy at work)."""

    @abc.abstractmethod
    async def close(self) -> None: ...


# -- Redis ------------------------------------------------------------------------------

# KEYS: records hash, members zset, entry index zset, digests hash.
# ARGV: member, value ("<hlc>\n<blob>"), entry. Alone, they are a last-writer-wins write
# (the HLC texts before the newlines compare); a compare-and-set adds ARGV[4] ('0':
# expect no record, '1': expect the value ARGV[5]). Few arguments: each costs the client.
_WRITE_LUA: Final = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if #ARGV == 3 then
  if old then
    local new = ARGV[2]
    local held = string.sub(old, 1, string.find(old, '\\n', 1, true) - 1)
    if held >= string.sub(new, 1, string.find(new, '\\n', 1, true) - 1) then return 0 end
  end
elseif ARGV[4] == '0' then
  if old then return 0 end
elseif old ~= ARGV[5] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('ZADD', KEYS[3], 0, ARGV[3])
redis.call('HSET', KEYS[4], ARGV[3], redis.sha1hex(ARGV[2]))
return 1
"""

# KEYS: records hash, members zset. ARGV: lo, hi, reverse, limit.
_SCAN_LUA: Final = """
local ms
if ARGV[3] == '1' then
  ms = redis.call('ZREVRANGEBYLEX', KEYS[2], ARGV[2], ARGV[1], 'LIMIT', 0, ARGV[4])
else
  ms = redis.call('ZRANGEBYLEX', KEYS[2], ARGV[1], ARGV[2], 'LIMIT', 0, ARGV[4])
end
local out = {}
for _, m in ipairs(ms) do
  local v = redis.call('HGET', KEYS[1], m)
  if v then
    out[#out + 1] = m
    out[#out + 1] = v
  end
end
return out
"""

# KEYS: records hash, members zset, entry index zset, digests hash. ARGV: member, entry.
_REMOVE_LUA: Final = """
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[2])
return 1
"""

# KEYS: entry index zset, digests hash. ARGV: hex chars per leaf, then lo/hi bound pairs.
_LEAVES_LUA: Final = """
local width = tonumber(ARGV[1])
local parts = {}
local order = {}
for i = 2, #ARGV, 2 do
  local es = redis.call('ZRANGEBYLEX', KEYS[1], '[' .. ARGV[i], '(' .. ARGV[i + 1])
  for _, e in ipairs(es) do
    local leaf = string.sub(e, 1, width)
    if width == 0 then leaf = '0' end
    local p = parts[leaf]
    if not p then
      p = {}
      parts[leaf] = p
      order[#order + 1] = leaf
    end
    p[#p + 1] = e .. '=' .. redis.call('HGET', KEYS[2], e) .. '\\n'
  end
end
local out = {}
for _, leaf in ipairs(order) do
  out[#out + 1] = leaf
  out[#out + 1] = redis.sha1hex(table.concat(parts[leaf]))
end
return out
"""

# KEYS: entry index zset, digests hash. ARGV: lo, hi bounds.
_ENTRIES_LUA: Final = """
local es = redis.call('ZRANGEBYLEX', KEYS[1], '[' .. ARGV[1], '(' .. ARGV[2])
local out = {}
for _, e in ipairs(es) do
  out[#out + 1] = e
  out[#out + 1] = redis.call('HGET', KEYS[2], e)
end
return out
"""


def _raw(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    raise StoreError(f"unexpected reply from a Redis quorum node: {value!r}")


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


class RedisNode(QuorumNode):
    """A quorum node on a Redis server (keys under ``prefix``).

    ``timeout`` (seconds, None: none) bounds each operation with one
    :func:`asyncio.timeout`. :meth:`from_url` gives the client no ``socket_timeout``
    (redis-py's default is 5 s) and relies on that deadline instead: with a socket
    timeout redis-py wraps every send in :func:`asyncio.wait_for`, which on Python
    3.11 costs a task and two more event-loop turns per command.
    """

    def __init__(
        self,
        name: str,
        client: aioredis.Redis,
        prefix: str = "q:",
        *,
        timeout: float | None = None,
    ) -> None:
        from redis import exceptions as rex

        self.name = name
        self._client = client
        self._timeout = self.deadline = timeout
        self._redis_error = rex.RedisError
        self._no_script = rex.NoScriptError
        self._prefix = prefix.encode()
        self._write = client.register_script(_WRITE_LUA)
        self._scan = client.register_script(_SCAN_LUA)
        self._remove = client.register_script(_REMOVE_LUA)
        self._leaves = client.register_script(_LEAVES_LUA)
        self._entries = client.register_script(_ENTRIES_LUA)
        self._index = self._prefix + b"idx"
        self._digests = self._prefix + b"dig"

    @classmethod
    def from_url(
        cls, name: str, url: str, *, timeout: float = 5.0, prefix: str = "q:"
    ) -> RedisNode:
        """A node for ``redis://host:port/db`` (connections are made on first use)."""
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        client = aioredis.Redis.from_url(
            url,
            socket_timeout=None,  # the node's own deadline instead (see the class docstring)
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            max_connections=64,
        )
        return cls(name, client, prefix, timeout=timeout)

    @property
    def native(self) -> aioredis.Redis:
        return self._client

    def _keys(self, group: bytes) -> list[bytes]:
        return [self._prefix + b"r:" + group, self._prefix + b"m:" + group]

    def _error(self, op: str, exc: BaseException) -> StoreError:
        """The multistore error for a driver failure (or our deadline) during ``op``."""
        from redis import exceptions as rex

        if isinstance(exc, (TimeoutError, rex.TimeoutError)):
            within = "" if self._timeout is None else f" within {self._timeout} s"
            return StoreTimeoutError(f"quorum node {self.name} did not answer {op}{within}")
        if isinstance(exc, (rex.ConnectionError, OSError)):
            return StoreUnavailableError(f"quorum node {self.name} unreachable ({op}): {exc}")
        return StoreError(f"quorum node {self.name} failed {op}: {exc}")

    async def _do(self, op: str, call: Awaitable[T]) -> T:
        """Await one driver call within the deadline, driver errors translated."""
        try:
            async with asyncio.timeout(self._timeout):
                return await call
        except (self._redis_error, OSError) as exc:  # TimeoutError is an OSError
            raise self._error(op, exc) from exc

    async def ping(self) -> None:
        await self._do("ping", self._client.ping())

    async def read(self, group: bytes, member: bytes = b"") -> Record | None:
        # the hot path: inlined rather than through _do
        try:
            async with asyncio.timeout(self._timeout):
                value = await self._client.hget(self._prefix + b"r:" + group, member)
        except (self._redis_error, OSError) as exc:
            raise self._error("read", exc) from exc
        return None if value is None else _unpack(_raw(value))

    async def _put(
        self, group: bytes, member: bytes, hlc: str, blob: bytes, cas: tuple[bytes | str, ...]
    ) -> bool:
        prefix = self._prefix
        args = (
            prefix + b"r:" + group,
            prefix + b"m:" + group,
            self._index,
            self._digests,
            member,
            _pack(hlc, blob),
            entry_name(group, member),
            *cas,
        )
        script = self._write
        try:
            async with asyncio.timeout(self._timeout):
                try:  # EVALSHA with the cached digest; the script is loaded on first use
                    done = await self._client.evalsha(script.sha, 4, *args)
                except self._no_script:
                    done = await script(keys=args[:4], args=args[4:])
        except (self._redis_error, OSError) as exc:
            raise self._error("write", exc) from exc
        return bool(done)

    def write_lww(
        self, group: bytes, member: bytes, hlc: str, blob: bytes
    ) -> Coroutine[Any, Any, bool]:
        return self._put(group, member, hlc, blob, ())

    def write_cas(
        self, group: bytes, member: bytes, hlc: str, blob: bytes, expected: Record | None
    ) -> Coroutine[Any, Any, bool]:
        cas = ("0", b"") if expected is None else ("1", _pack(*expected))
        return self._put(group, member, hlc, blob, cas)

    async def scan(
        self,
        group: bytes,
        lo: bytes | None,
        hi: bytes | None,
        *,
        reverse: bool = False,
        limit: int | None = None,
    ) -> list[tuple[bytes, Record]]:
        low = b"-" if lo is None else b"[" + lo
        high = b"+" if hi is None else b"(" + hi
        args = [low, high, "1" if reverse else "0", -1 if limit is None else limit]
        flat = await self._do("scan", self._scan(keys=self._keys(group), args=args))
        return [(bytes(flat[i]), _unpack(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def remove(self, group: bytes, member: bytes = b"") -> None:
        keys = [*self._keys(group), self._index, self._digests]
        await self._do("remove", self._remove(keys=keys, args=[member, entry_name(group, member)]))

    async def leaf_hashes(self, arcs: Sequence[tuple[int, int]], depth: int) -> dict[int, str]:
        args: list[str | int] = [depth // 4]
        for lo, hi in arcs:
            args.extend(_token_hex_bounds(lo, hi))
        flat = await self._do("merkle", self._leaves(keys=[self._index, self._digests], args=args))
        return {int(_text(flat[i]), 16): _text(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def entries(self, lo: int, hi: int) -> list[tuple[str, str]]:
        bounds = list(_token_hex_bounds(lo, hi))
        call = self._entries(keys=[self._index, self._digests], args=bounds)
        flat = await self._do("merkle entries", call)
        return [(_text(flat[i]), _text(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def wipe(self) -> None:
        pattern = b"".join(
            b"\\" + bytes([c]) if c in b"*?[]\\" else bytes([c]) for c in self._prefix
        )
        cursor: int = 0
        while True:  # SCAN by hand: each round trip gets the deadline
            cursor, keys = await self._do(
                "wipe", self._client.scan(cursor, match=pattern + b"*", count=500)
            )
            if keys:
                await self._do("wipe", self._client.unlink(*keys))
            if not cursor:
                return

    async def close(self) -> None:
        await self._client.aclose()

    def __repr__(self) -> str:
        return f"RedisNode({self.name!r})"


# -- SQLite -----------------------------------------------------------------------------

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS records (
    grp BLOB NOT NULL, member BLOB NOT NULL, value BLOB NOT NULL, hlc TEXT NOT NULL,
    entry TEXT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (grp, member)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_entry ON records (entry);
"""


class SQLiteNode(QuorumNode):
    """A quorum node in a SQLite file, on its own worker thread."""

    def __init__(self, name: str, path: str | Path) -> None:
        self.name = name
        self.path = str(path)
        self._worker: Worker | None = None
        self._conn: sqlite3.Connection | None = None
        self._down = False
        self._delay = 0.0

    async def open(self) -> SQLiteNode:
        worker = Worker(f"quorum-{self.name}")
        try:
            self._conn = await worker.run(_sqlite_connect, self.path)
        except BaseException:
            worker.close()
            raise
        self._worker = worker
        return self

    def set_down(self, down: bool) -> None:
        """Simulate a crashed node (every call fails, data kept) or bring it back."""
        self._down = down

    def set_delay(self, seconds: float) -> None:
        """Add latency to every call (a slow node or link)."""
        self._delay = max(0.0, seconds)

    @property
    def down(self) -> bool:
        return self._down

    async def _call(self, op: str, fn: Callable[..., T], *args: Any) -> T:
        if self._delay:
            await asyncio.sleep(self._delay)
        if self._down:
            raise StoreUnavailableError(f"quorum node {self.name} is down ({op})")
        if self._worker is None or self._conn is None:
            raise UsageError(f"quorum node {self.name} is not open")
        try:
            return await self._worker.run(fn, self._conn, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"quorum node {self.name} failed {op}: {exc}") from exc

    async def ping(self) -> None:
        await self._call("ping", lambda conn: None)

    async def read(self, group: bytes, member: bytes = b"") -> Record | None:
        value = await self._call("read", _sqlite_read, group, member)
        return None if value is None else _unpack(value)

    async def write_lww(self, group: bytes, member: bytes, hlc: str, blob: bytes) -> bool:
        return await self._call("write", _sqlite_write, group, member, hlc, blob, "lww", None)

    async def write_cas(
        self, group: bytes, member: bytes, hlc: str, blob: bytes, expected: Record | None
    ) -> bool:
        old = None if expected is None else _pack(*expected)
        return await self._call("write", _sqlite_write, group, member, hlc, blob, "cas", old)

    async def scan(
        self,
        group: bytes,
        lo: bytes | None,
        hi: bytes | None,
        *,
        reverse: bool = False,
        limit: int | None = None,
    ) -> list[tuple[bytes, Record]]:
        rows = await self._call("scan", _sqlite_scan, group, lo, hi, reverse, limit)
        return [(member, _unpack(value)) for member, value in rows]

    async def remove(self, group: bytes, member: bytes = b"") -> None:
        await self._call("remove", _sqlite_remove, group, member)

    async def leaf_hashes(self, arcs: Sequence[tuple[int, int]], depth: int) -> dict[int, str]:
        rows: list[tuple[str, str]] = []
        for lo, hi in arcs:
            rows += await self.entries(lo, hi)
        width = depth // 4
        leaves: dict[int, list[tuple[str, str]]] = {}
        for entry, digest in rows:
            leaves.setdefault(int(entry[:width], 16) if width else 0, []).append((entry, digest))
        return {leaf: leaf_hash(items) for leaf, items in leaves.items()}

    async def entries(self, lo: int, hi: int) -> list[tuple[str, str]]:
        low, high = _token_hex_bounds(lo, hi)
        return await self._call("merkle entries", _sqlite_entries, low, high)

    async def wipe(self) -> None:
        await self._call("wipe", lambda conn: conn.execute("DELETE FROM records"))

    async def close(self) -> None:
        worker, conn = self._worker, self._conn
        self._worker = self._conn = None
        if worker is not None and conn is not None:
            try:
                await worker.run(conn.close)
            finally:
                worker.close()

    def __repr__(self) -> str:
        return f"SQLiteNode({self.name!r}, {self.path!r})"


def _sqlite_connect(path: str) -> sqlite3.Connection:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=5.0)
        conn.execute("PRAGMA journal_mode = wal")
        conn.execute("PRAGMA synchronous = normal")
        conn.executescript(_SCHEMA)
    except sqlite3.Error as exc:
        raise StoreUnavailableError(f"cannot open quorum node file {path!r}: {exc}") from exc
    return conn


def _sqlite_read(conn: sqlite3.Connection, group: bytes, member: bytes) -> bytes | None:
    row = conn.execute(
        "SELECT value FROM records WHERE grp = ? AND member = ?", (group, member)
    ).fetchone()
    return None if row is None else bytes(row[0])


def _sqlite_write(
    conn: sqlite3.Connection,
    group: bytes,
    member: bytes,
    hlc: str,
    blob: bytes,
    mode: str,
    expected: bytes | None,
) -> bool:
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute(
            "SELECT value, hlc FROM records WHERE grp = ? AND member = ?", (group, member)
        ).fetchone()
        if mode == "lww":
            if row is not None and row[1] >= hlc:
                conn.execute("COMMIT")
                return False
        elif (None if row is None else bytes(row[0])) != expected:
            conn.execute("COMMIT")
            return False
        value = _pack(hlc, blob)
        conn.execute(
            "INSERT OR REPLACE INTO records (grp, member, value, hlc, entry, digest) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (group, member, value, hlc, entry_name(group, member), _digest(value)),
        )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return True


def _sqlite_scan(
    conn: sqlite3.Connection,
    group: bytes,
    lo: bytes | None,
    hi: bytes | None,
    reverse: bool,
    limit: int | None,
) -> list[tuple[bytes, bytes]]:
    sql = "SELECT member, value FROM records WHERE grp = ?"
    params: list[Any] = [group]
    if lo is not None:
        sql += " AND member >= ?"
        params.append(lo)
    if hi is not None:
        sql += " AND member < ?"
        params.append(hi)
    sql += f" ORDER BY member {'DESC' if reverse else 'ASC'}"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [(bytes(m), bytes(v)) for m, v in conn.execute(sql, params)]


def _sqlite_remove(conn: sqlite3.Connection, group: bytes, member: bytes) -> None:
    conn.execute("DELETE FROM records WHERE grp = ? AND member = ?", (group, member))


def _sqlite_entries(conn: sqlite3.Connection, low: str, high: str) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT entry, digest FROM records WHERE entry >= ? AND entry < ? ORDER BY entry",
        (low, high),
    )
    return [(str(e), str(d)) for e, d in rows]
