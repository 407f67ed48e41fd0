"""The quorum node on a Redis server (see :mod:`._qnodes` for the interface).

Each record is a field of a hash per group (``<prefix>r:<group>``) with its member
in a sorted set (``<prefix>m:<group>``, for ordered range reads); the anti-entropy
index (entry name -> SHA-1 of the value) is a sorted set and a hash per node. Every
operation is one round trip: a Lua script where it must be atomic.

Commands go over the lean RESP2 client (:mod:`multistore._resp`): the hot calls —
:meth:`RedisNode.read`, :meth:`~RedisNode.write_lww`, :meth:`~RedisNode.write_cas`
— start the command at once and return a :class:`~._qnodes.Reply` that the reply's
I/O callback settles, so the coordinator's fan-out needs no task per replica and
hears each answer without waiting for another turn of the event loop. URLs the
lean client cannot serve (``rediss://``, ``unix://``, ``?ssl=true``) go through
redis-py instead, the same commands sent on a connection of its pool: the package's one
Redis transport (:mod:`multistore._redis_link`) picks, from the URL read as every store
URL is.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar, cast

from multistore._redis_link import Link, open_link
from multistore._resp import (
    RespConnectionError,
    RespError,
    RespScript,
    RespTimeoutError,
    pack_command,
)
from multistore.errors import Outcome, StoreError, StoreTimeoutError, StoreUnavailableError
from multistore.replication._qnodes import (
    QuorumNode,
    Record,
    Reply,
    entry_name,
    pack_record,
    record_digest,
    token_hex_bounds,
    unpack_record,
)

__all__ = ["RedisNode"]

T = TypeVar("T")

# KEYS: records hash, members zset, entry index zset, digests hash.
# ARGV: member, value ("<hlc>\n<blob>"), entry, the value's SHA-1 (hex; computed once by
# the client rather than by every replica). Alone, they are a last-writer-wins write: the
# HLC texts before the newlines compare byte by byte, as Python and SQLite compare them
# (Lua's own < follows the server's locale). An HLC text in its usual form starts with
# 12 + 6 lowercase hex digits (physical time, counter) of fixed width, whose byte order is
# their order as numbers: those compare in two steps, and only a tie, or a text not in
# that form, walks the bytes. A compare-and-set adds ARGV[5] ('0': expect no record, '1':
# expect the value ARGV[6]). Few arguments: each costs the client.
_WRITE: Final = RespScript(
    """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if #ARGV == 4 then
  if old then
    local new = ARGV[2]
    local po, co = string.match(old, HLC_HEAD)
    local pn, cn = string.match(new, HLC_HEAD)
    local x, y, i = 0, 0, 1
    if po and pn then
      if po ~= pn then
        x, y = tonumber(po, 16), tonumber(pn, 16)
      elseif co ~= cn then
        x, y = tonumber(co, 16), tonumber(cn, 16)
      else
        i = 21  -- the same stamp: the node ids after it decide
      end
    end
    if x == y then
      local a = string.find(old, '\\n', 1, true) - 1
      local b = string.find(new, '\\n', 1, true) - 1
      while i <= a and i <= b do
        x, y = string.byte(old, i), string.byte(new, i)
        if x ~= y then break end
        i = i + 1
      end
      if x == y and a >= b then return 0 end
    end
    if x > y then return 0 end
  end
elseif ARGV[5] == '0' then
  if old then return 0 end
elseif old ~= ARGV[6] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if not old then  -- a record that exists is in both indexes already
  redis.call('ZADD', KEYS[2], 0, ARGV[1])
  redis.call('ZADD', KEYS[3], 0, ARGV[3])
end
redis.call('HSET', KEYS[4], ARGV[3], ARGV[4])
return 1
""".replace("HLC_HEAD", "'^(" + "[0-9a-f]" * 12 + ")%-(" + "[0-9a-f]" * 6 + ")%-'")
)

# KEYS: records hash, members zset. ARGV: lo, hi, reverse, limit.
_SCAN: Final = RespScript("""
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
""")

# KEYS: records hash, members zset, entry index zset, digests hash. ARGV: member, entry,
# and the value the record must still hold (optional).
_REMOVE: Final = RespScript("""
if #ARGV == 3 and redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[3] then return 0 end
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[2])
return removed
""")

# KEYS: entry index zset, digests hash. ARGV: hex chars per leaf, then lo/hi bound pairs.
_LEAVES: Final = RespScript("""
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
""")

# KEYS: entry index zset, digests hash. ARGV: lo, hi bounds.
_ENTRIES: Final = RespScript("""
local es = redis.call('ZRANGEBYLEX', KEYS[1], '[' .. ARGV[1], '(' .. ARGV[2])
local out = {}
for _, e in ipairs(es) do
  out[#out + 1] = e
  out[#out + 1] = redis.call('HGET', KEYS[2], e)
end
return out
""")

_PING: Final = pack_command("PING")

_REFUSALS: Final = frozenset(
    {"NOREPLICAS", "READONLY", "OOM", "LOADING", "MASTERDOWN", "BUSY", "NOPERM", "NOAUTH"}
)
"""Error replies of commands Redis refused before running them (or, for a script, at
its first write command: each of ours writes nothing before its first write)."""


def _bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    raise StoreError(f"unexpected reply from a Redis quorum node: {value!r}")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _flat(value: object) -> list[Any]:
    if isinstance(value, list):
        return value
    raise StoreError(f"unexpected reply from a Redis quorum node: {value!r}")


def _record(value: object) -> Record | None:
    return None if value is None else unpack_record(_bytes(value))


_last_packed: list[tuple[tuple[object, ...], object, Any]] = [((), None, None)]


def _repacked(key: tuple[object, ...], blob: object, pack: Callable[[], T]) -> T:
    """``pack()``, or what it gave last time for the same ``key`` and the same ``blob``
    object: a request sends one command to each of its replicas, packed once. (One
    tuple, read and replaced whole, so event loops in other threads cannot mix up
    its parts.)"""
    last_key, last_blob, packed = _last_packed[0]
    if last_blob is blob and last_key == key:
        return cast("T", packed)
    fresh = pack()
    _last_packed[0] = (key, blob, fresh)
    return fresh


class RedisNode(QuorumNode):
    """A quorum node on a Redis server (keys under ``prefix``); every call has
    ``timeout`` seconds (connecting included), then fails with StoreTimeoutError."""

    def __init__(self, name: str, link: Link, prefix: str = "q:", *, timeout: float) -> None:
        self.name = name
        self.link = link
        self._send = link.send
        self.deadline = timeout
        self._prefix = prefix.encode()
        self._index = self._prefix + b"idx"
        self._digests = self._prefix + b"dig"
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_url(
        cls, name: str, url: str, *, timeout: float = 5.0, prefix: str = "q:"
    ) -> RedisNode:
        """A node for ``redis://[[user]:password@]host:port/db`` (connections are made
        on first use); ``rediss://``, ``?ssl=true`` and ``unix://`` go through redis-py
        (see :func:`multistore._redis_link.open_link`)."""
        link = open_link(url, timeout=timeout, max_connections=64)
        return cls(name, link, prefix, timeout=timeout)

    # -- one command --------------------------------------------------------------------

    def _start(
        self,
        op: str,
        command: bytes,
        convert: Callable[[object], T],
        fallback: Callable[[], bytes] | None = None,
    ) -> Reply[T]:
        """Send ``command`` now; the reply settles the future with ``convert(reply)``
        or a StoreError (see :class:`~._qnodes.Reply`)."""
        loop = self._loop
        if loop is None:  # the loop it serves, asked once (a getpid call on Python 3.11)
            loop = self._loop = asyncio.get_running_loop()
        reply: Reply[T] = Reply(loop=loop)
        self._send(command, functools.partial(self._settle, reply, op, convert), fallback)
        return reply

    def _settle(
        self, reply: Reply[T], op: str, convert: Callable[[object], T], got: object
    ) -> None:
        if isinstance(got, (RespError, RespConnectionError)):
            reply.settle(None, self._error(op, got))
            return
        try:
            value = convert(got)
        except StoreError as exc:
            reply.settle(None, exc)
            return
        reply.settle(value)

    def _error(self, op: str, exc: RespError | RespConnectionError) -> StoreError:
        """The multistore error for a failed command (sent or not: the outcome)."""
        if isinstance(exc, RespError):
            # refusals Redis makes before a script's first write: nothing was applied
            code = exc.message.split(" ", 1)[0]
            refused = Outcome.DEFINITE if code in _REFUSALS else Outcome.INDETERMINATE
            return StoreError(
                f"quorum node {self.name} failed {op}: {exc.message}", outcome=refused
            )
        outcome = Outcome.INDETERMINATE if exc.sent else Outcome.DEFINITE
        if isinstance(exc, RespTimeoutError):
            return StoreTimeoutError(
                f"quorum node {self.name} did not answer {op} within {self.deadline} s",
                outcome=outcome,
            )
        return StoreUnavailableError(
            f"quorum node {self.name} unreachable ({op}): {exc}", outcome=outcome
        )

    def _script(
        self,
        op: str,
        script: RespScript,
        keys: Sequence[bytes],
        args: Sequence[bytes | str | int],
        convert: Callable[[object], T],
    ) -> Reply[T]:
        command, fallback = script.pack(keys, args)
        return self._start(op, command, convert, fallback)

    # -- the node interface -------------------------------------------------------------

    async def ping(self) -> None:
        await self._start("ping", _PING, _text)

    def read(self, group: bytes, member: bytes = b"") -> Reply[Record | None]:
        prefix = self._prefix
        command = _repacked(
            (prefix, group, member),
            None,
            lambda: pack_command(b"HGET", prefix + b"r:" + group, member),
        )
        return self._start("read", command, _record)

    def _put(
        self, group: bytes, member: bytes, hlc: str, blob: bytes, cas: tuple[bytes | str, ...]
    ) -> Reply[bool]:
        prefix = self._prefix

        def pack() -> tuple[bytes, Callable[[], bytes]]:
            keys = (prefix + b"r:" + group, prefix + b"m:" + group, self._index, self._digests)
            value = pack_record(hlc, blob)
            args = (member, value, entry_name(group, member), record_digest(value), *cas)
            return _WRITE.pack(keys, args)

        command, fallback = _repacked((prefix, group, member, hlc, cas), blob, pack)
        return self._start("write", command, bool, fallback)

    def write_lww(self, group: bytes, member: bytes, hlc: str, blob: bytes) -> Reply[bool]:
        return self._put(group, member, hlc, blob, ())

    def write_cas(
        self, group: bytes, member: bytes, hlc: str, blob: bytes, expected: Record | None
    ) -> Reply[bool]:
        cas = ("0", b"") if expected is None else ("1", pack_record(*expected))
        return self._put(group, member, hlc, blob, cas)

    def _keys(self, group: bytes) -> list[bytes]:
        return [self._prefix + b"r:" + group, self._prefix + b"m:" + group]

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
        flat = await self._script("scan", _SCAN, self._keys(group), args, _flat)
        return [(_bytes(flat[i]), unpack_record(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def remove(
        self, group: bytes, member: bytes = b"", *, expected: Record | None = None
    ) -> bool:
        keys = [*self._keys(group), self._index, self._digests]
        args: list[bytes | str] = [member, entry_name(group, member)]
        if expected is not None:
            args.append(pack_record(*expected))
        return await self._script("remove", _REMOVE, keys, args, bool)

    async def leaf_hashes(self, arcs: Sequence[tuple[int, int]], depth: int) -> dict[int, str]:
        args: list[str | int] = [depth // 4]
        for lo, hi in arcs:
            args.extend(token_hex_bounds(lo, hi))
        keys = [self._index, self._digests]
        flat = await self._script("merkle", _LEAVES, keys, args, _flat)
        return {int(_text(flat[i]), 16): _text(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def entries(self, lo: int, hi: int) -> list[tuple[str, str]]:
        keys = [self._index, self._digests]
        bounds = token_hex_bounds(lo, hi)
        flat = await self._script("merkle entries", _ENTRIES, keys, bounds, _flat)
        return [(_text(flat[i]), _text(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def wipe(self) -> None:
        pattern = b"".join(
            b"\\" + bytes([c]) if c in b"*?[]\\" else bytes([c]) for c in self._prefix
        )
        cursor = b"0"
        while True:  # SCAN by hand: each round trip gets the deadline
            command = pack_command(b"SCAN", cursor, b"MATCH", pattern + b"*", b"COUNT", 500)
            cursor, keys = await self._start("wipe", command, _flat)
            if keys:
                await self._start("wipe", pack_command(b"UNLINK", *keys), _text)
            if cursor == b"0":
                return

    async def close(self) -> None:
        await self.link.aclose()

    def __repr__(self) -> str:
        return f"RedisNode({self.name!r})"
