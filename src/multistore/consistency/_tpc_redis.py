"""Redis participant: a write-set staged and guarded at prepare, applied by a Lua script.

A branch buffers ``set``/``delete`` calls and remembers the values it read with
``get``. **prepare** runs one script that checks the read values are unchanged and no
other prepared branch holds a lock on the keys, then takes a lock key per written key,
stores the write-set under ``ms2pc:tx:<gid>`` and adds the gid to ``ms2pc:prepared``.
**commit** runs one script that applies the write-set, drops the locks and records the
gid in ``ms2pc:committed`` (the commit marker; recovery purges old ones), atomically;
**rollback** drops the staged set and the locks. Durability is Redis's own
(AOF ``appendfsync``): with ``everysec`` a prepared branch can be lost in a power cut.
The locks are honoured by 2PC branches; plain writers that ignore them are not stopped.
Keys get the URL's ``prefix`` option in front.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from typing import Any, Final, NoReturn, Self

import redis.asyncio as aioredis
from redis import exceptions as rex

from multistore.consistency._tpc_participants import Branch, Participant, purgeable
from multistore.core._tpc import Vote, Xid
from multistore.errors import (
    ConflictError,
    InvalidValueError,
    Outcome,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
    UnsupportedError,
)
from multistore.urls import StoreURL

__all__ = ["RedisParticipant"]

# KEYS[1] staged set key, KEYS[2] prepared set; ARGV[1] gid, ARGV[2] payload, ARGV[3] prefix.
_PREPARE: Final = """
local p = cjson.decode(ARGV[2])
local prefix = ARGV[3]
for key, value in pairs(p.reads) do
    local now = redis.call('GET', prefix .. key)
    if value == cjson.null then value = false end
    if now ~= value then return {0, 'changed since read: ' .. key} end
end
for _, op in ipairs(p.writes) do
    local owner = redis.call('GET', prefix .. 'ms2pc:lock:' .. op[2])
    if owner and owner ~= ARGV[1] then return {0, 'locked by ' .. owner .. ': ' .. op[2]} end
end
for _, op in ipairs(p.writes) do
    redis.call('SET', prefix .. 'ms2pc:lock:' .. op[2], ARGV[1])
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return {1, ''}
"""

# KEYS[1], KEYS[2] as above, KEYS[3] the commit markers (a sorted set scored by the server's
# clock); ARGV[1] gid, ARGV[2] "1" to apply (commit) or "0" (abort), ARGV[3] prefix.
_FINISH: Final = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local p = cjson.decode(raw)
local prefix = ARGV[3]
for _, op in ipairs(p.writes) do
    if ARGV[2] == '1' then
        if op[1] == 'set' then redis.call('SET', prefix .. op[2], op[3])
        else redis.call('DEL', prefix .. op[2]) end
    end
    local lock = prefix .. 'ms2pc:lock:' .. op[2]
    if redis.call('GET', lock) == ARGV[1] then redis.call('DEL', lock) end
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
if ARGV[2] == '1' then
    redis.call('ZADD', KEYS[3], redis.call('TIME')[1], ARGV[1])
end
return 1
"""


class RedisBranch(Branch):
    """Buffered writes on Redis: ``await b.get(k)``, ``b.set(k, v)``, ``b.delete(k)``."""

    participant: RedisParticipant

    def __init__(self, participant: RedisParticipant, xid: Xid) -> None:
        super().__init__(participant, xid)
        self.reads: dict[str, str | None] = {}
        self.writes: list[list[str]] = []
        self.state = "active"

    async def get(self, key: str) -> str | None:
        """The value (as text), seeing this branch's own buffered writes."""
        for op in reversed(self.writes):
            if op[1] == key:
                return op[2] if op[0] == "set" else None
        value = await self.participant.call("get", self.participant.prefix + key)
        text = None if value is None else bytes(value).decode()
        self.reads.setdefault(key, text)
        return text

    def set(self, key: str, value: str) -> None:
        if not isinstance(value, str):
            raise InvalidValueError(f"{self.name}: 2PC values on Redis are str, not {value!r}")
        self.writes.append(["set", key, value])

    def delete(self, key: str) -> None:
        self.writes.append(["del", key])

    async def prepare(self) -> Vote:
        if not self.writes and not self.reads:
            self.state = "done"
            return Vote.READ_ONLY
        p = self.participant
        payload = json.dumps({"reads": self.reads, "writes": self.writes})
        ok, why = await p.call(
            "eval", _PREPARE, 2, p.tx_key(self.xid), p.set_key, str(self.xid), payload, p.prefix
        )
        if not int(ok):
            self.state = "done"
            raise ConflictError(f"{self.name}: cannot prepare: {bytes(why).decode()}")
        if not self.writes:
            await p.rollback_prepared(self.xid)
            self.state = "done"
            return Vote.READ_ONLY
        self.state = "prepared"
        return Vote.YES

    async def commit(self, *, one_phase: bool = False) -> bool:
        if one_phase and await self.prepare() is Vote.READ_ONLY:
            return True
        self.state = "done"
        return await self.participant.commit_prepared(self.xid)

    async def rollback(self) -> None:
        was, self.state = self.state, "done"
        if was == "prepared":
            await self.participant.rollback_prepared(self.xid)

    async def commit_deciding(self, prepared: Sequence[str]) -> NoReturn:
        raise UnsupportedError(f"participant {self.name!r} (Redis) cannot be a last resource")

    async def release(self) -> None:
        if self.state == "active":
            self.state = "done"


class RedisParticipant(Participant):
    def __init__(self, name: str, url: StoreURL, client: aioredis.Redis) -> None:
        super().__init__(name, url)
        self.client = client
        self.prefix = url.str_option("prefix", "")
        self.set_key = f"{self.prefix}ms2pc:prepared"
        self.done_key = f"{self.prefix}ms2pc:committed"
        self.logs_key = f"{self.prefix}ms2pc:logs"

    @classmethod
    async def open(cls, name: str, url: StoreURL) -> Self:
        timeout = url.float_option("timeout", 5.0)
        client = aioredis.Redis(
            host=url.host or "127.0.0.1",
            port=url.port or 6379,
            db=int(url.database or 0),
            password=url.password,
            username=url.username,
            socket_timeout=timeout,
            socket_connect_timeout=url.float_option("connect_timeout", timeout),
        )
        self = cls(name, url, client)
        try:
            await self.call("ping")
        except BaseException:
            await client.aclose()
            raise
        return self

    def tx_key(self, xid: Xid) -> str:
        return f"{self.prefix}ms2pc:tx:{xid}"

    async def call(self, command: str, *args: Any) -> Any:
        try:
            return await getattr(self.client, command)(*args)
        except rex.TimeoutError as exc:
            raise StoreTimeoutError(f"redis: {exc}") from exc
        except rex.ConnectionError as exc:
            raise StoreUnavailableError(f"redis: {exc}") from exc
        except rex.RedisError as exc:
            raise StoreError(f"redis: {exc}", outcome=Outcome.INDETERMINATE) from exc

    async def begin(self, xid: Xid) -> RedisBranch:
        return RedisBranch(self, xid)

    async def in_doubt(self) -> list[Xid]:
        members = await self.call("smembers", self.set_key)
        found = (Xid.try_parse(bytes(m).decode()) for m in members)
        return sorted(xid for xid in found if xid is not None and xid.branch == self.name)

    async def commit_prepared(self, xid: Xid) -> bool:
        args = (self.tx_key(xid), self.set_key, self.done_key, str(xid), "1", self.prefix)
        return bool(await self.call("eval", _FINISH, 3, *args))

    async def rollback_prepared(self, xid: Xid) -> bool:
        args = (self.tx_key(xid), self.set_key, self.done_key, str(xid), "0", self.prefix)
        return bool(await self.call("eval", _FINISH, 3, *args))

    async def committed(self, xid: Xid) -> bool | None:
        return await self.call("zscore", self.done_key, str(xid)) is not None

    async def purge_markers(
        self, older_than: float, keep: Collection[str], owned: Callable[[Xid], bool]
    ) -> int:
        now = (await self.call("time"))[0]
        old = await self.call("zrangebyscore", self.done_key, "-inf", now - older_than)
        gone = purgeable([bytes(x).decode() for x in old], keep, owned)
        if gone:
            await self.call("zrem", self.done_key, *gone)
        return len(gone)

    async def note_log(self, log_id: str, location: str) -> None:
        await self.call("hset", self.logs_key, log_id, location)

    async def known_logs(self) -> dict[str, str]:
        found = await self.call("hgetall", self.logs_key)
        return {bytes(k).decode(): bytes(v).decode() for k, v in found.items()}

    async def execute_script(self, sql: str) -> NoReturn:
        raise UnsupportedError(f"participant {self.name!r} is Redis: it runs no SQL")

    async def close(self) -> None:
        await self.client.aclose()
