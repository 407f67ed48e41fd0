"""The key-value store on Redis Cluster (``redis+cluster://h1:7000,h2:7001/?prefix=…``).

Commands travel on the lean RESP client with slot routing
(:class:`multistore._resp_cluster.RespCluster`): each key goes to the primary that
serves its hash slot; ``MOVED``/``ASK`` redirections and failovers are followed. What
the cluster changes for a user:

- Single-key operations behave as on one server (the conformance suite runs on both).
- ``mget`` and ``delete`` with keys in several slots send one command per slot, in
  parallel: each slot's part is atomic, the whole is not.
- ``scan`` asks every primary and merges.
- A Lua script of a caller's own (:meth:`RedisClusterKeyValueStore.script`; the
  idempotency records use it) must name keys of one slot: put the part that matters
  in a hash tag (``{order-17}:lines``). Keys in several slots are a
  :class:`~multistore.errors.UsageError` before anything is sent.
- Writes are replicated asynchronously by Redis. With ``?wait_replicas=1`` (and
  ``wait_timeout``, seconds) every write is followed by ``WAIT``: a write that fewer
  replicas acknowledged in time raises an indeterminate :class:`StoreTimeoutError` —
  it is on the primary and may or may not survive a failover. Without it an
  acknowledged write can be lost when its primary dies before its replica copied it.

Errors: a node unreachable before the command was sent is retried (after a topology
refresh) until ``timeout``, then :class:`StoreUnavailableError`, definite; a lost
connection or no answer after sending is indeterminate.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Final, Self

from multistore._resp import (
    Arg,
    RespConnectionError,
    RespError,
    RespScript,
    pack_command,
)
from multistore._resp_cluster import RespCluster, connection_error, key_slot
from multistore.errors import (
    InvalidValueError,
    MultistoreError,
    Outcome,
    StoreError,
    StoreTimeoutError,
    UsageError,
)
from multistore.stores.kv._api import KeyValueStore, RateLimit, WrongTypeError
from multistore.stores.kv._checks import (
    check_amount,
    check_index,
    check_key,
    check_keys,
    check_limit,
    check_member,
    check_score,
    check_ttl,
    check_value,
    ttl_millis,
)
from multistore.stores.kv._redis_lua import (
    COMPARE_AND_SET_LUA,
    RATE_LIMIT_LUA,
    cas_args,
    glob_escape,
    ttl_from_pttl,
)
from multistore.urls import StoreURL

__all__ = ["RedisClusterKeyValueStore", "RedisClusterScript"]

_WRITES: Final = frozenset(
    {"SET", "DEL", "PEXPIRE", "INCRBY", "ZADD", "ZINCRBY", "ZREM", "EVALSHA", "EVAL"}
)


def _float(raw: object) -> float:
    if isinstance(raw, bytes | str | int | float):
        return float(raw)
    raise StoreError(f"unexpected reply from Redis: {raw!r}")


class RedisClusterKeyValueStore(KeyValueStore):
    """Key-value store on a Redis Cluster. See the module docstring."""

    def __init__(self, url: StoreURL, cluster: RespCluster) -> None:
        self.url = url
        self._cluster = cluster
        self._prefix = url.str_option("prefix", "")
        self._wait = url.int_option("wait_replicas", 0)
        self._wait_ms = max(1, round(url.float_option("wait_timeout", 1.0) * 1000))
        self._wait_command = pack_command("WAIT", self._wait, self._wait_ms)
        self._closed = False
        self._close_callbacks: list[Any] = []
        self._limiter = self.script(RATE_LIMIT_LUA, name="rate_limit")
        self._compare_and_set = self.script(COMPARE_AND_SET_LUA, name="compare_and_set")

    @classmethod
    async def open(cls, url: StoreURL) -> Self:
        cluster = RespCluster.from_url(url)
        store = cls(url, cluster)
        try:
            await store._run(None, "connect", cluster.refresh())
        except MultistoreError as exc:
            cluster.close()
            exc.outcome = Outcome.DEFINITE
            raise
        return store

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            callbacks, self._close_callbacks = self._close_callbacks, []
            try:
                for callback in callbacks:
                    callback()
            finally:
                self._cluster.close()

    def on_close(self, callback: Any) -> None:
        """Run ``callback`` when the store closes."""
        self._close_callbacks.append(callback)

    @property
    def native(self) -> RespCluster:
        """The cluster client (keys are not prefixed for you)."""
        return self._cluster

    # -- plumbing --------------------------------------------------------------------

    def _k(self, key: object) -> str:
        return self._prefix + check_key(key)

    async def _run(self, key: str | None, op: str, call: Any) -> Any:
        """Await ``call`` (a cluster call) with errors mapped for ``op``."""
        if self._closed:
            call.close()
            raise UsageError(f"the key-value store {self.url} is closed")
        where = f"{op} on {self.url}" + (f" (key {key!r})" if key is not None else "")
        try:
            return await call
        except RespError as exc:
            raise _mapped(exc.message, op, key, where) from None
        except RespConnectionError as exc:
            raise connection_error(exc, where) from exc

    async def _cmd(self, key: str, op: str, name: str, k: str, *rest: Arg) -> Any:
        """Command ``name`` on the slot of ``k`` (the prefixed ``key``)."""
        slot = key_slot(k)
        command = pack_command(name, k, *rest)
        if self._wait and name in _WRITES:
            return await self._waited(slot, command, None, op, key)
        return await self._run(key, op, self._cluster.call(slot, command))

    async def _waited(
        self, slot: int, command: bytes, fallback: Any, op: str, key: str | None
    ) -> Any:
        """A write followed by ``WAIT`` on the same connection (Redis counts the replicas
        that acknowledged the writes of *that* connection)."""
        call = self._cluster.call(slot, command, fallback, then=self._wait_command, then_count=1)
        reply, acked = await self._run(key, op, call)
        if isinstance(acked, RespError) or int(acked) < self._wait:
            raise StoreTimeoutError(
                f"{op} on {self.url} (key {key!r}): written on the primary but only "
                f"{acked} of {self._wait} replicas acknowledged it within "
                f"{self._wait_ms} ms; a failover now may lose it",
                outcome=Outcome.INDETERMINATE,
            )
        return reply

    def script(self, body: str, *, name: str = "script") -> RedisClusterScript:
        """A Lua script run with ``EVALSHA`` (``EVAL`` when the node lacks it) on the
        primary of its keys' slot; the keys (prefixed) must share one slot."""
        return RedisClusterScript(self, RespScript(body), name)

    async def _eval(
        self, script: RespScript, name: str, keys: Sequence[str], args: Sequence[Arg]
    ) -> Any:
        ks = [self._k(k) for k in keys]
        slots = {key_slot(k) for k in ks}
        if len(slots) > 1:
            raise UsageError(
                f"{name}: the keys {list(keys)!r} hash to {len(slots)} slots of the Redis "
                "Cluster; a script's keys must share one (use a hash tag, {like-this})"
            )
        slot = slots.pop() if slots else 0
        command, fallback = script.pack(ks, args)
        key = keys[0] if keys else None
        if self._wait:
            return await self._waited(slot, command, fallback, name, key)
        return await self._run(key, name, self._cluster.call(slot, command, fallback))

    async def _per_slot(self, op: str, name: str, keys: list[str]) -> list[tuple[list[int], Any]]:
        """``name`` run once per slot over the keys of that slot, in parallel; for each
        slot the positions of its keys and the reply."""
        groups: dict[int, list[int]] = defaultdict(list)
        for i, k in enumerate(keys):
            groups[key_slot(k)].append(i)

        async def one(slot: int, where: list[int]) -> tuple[list[int], Any]:
            command = pack_command(name, *[keys[i] for i in where])
            if self._wait and name in _WRITES:
                return where, await self._waited(slot, command, None, op, None)
            return where, await self._run(None, op, self._cluster.call(slot, command))

        return list(await asyncio.gather(*[one(s, w) for s, w in groups.items()]))

    # -- strings ---------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        value = await self._cmd(key, "get", "GET", self._k(key))
        return None if value is None else bytes(value)

    async def set(self, key: str, value: bytes | str, *, ttl: float | None = None) -> None:
        k, data = self._k(key), check_value(value)
        if ttl is None:
            await self._cmd(key, "set", "SET", k, data)
        else:
            await self._cmd(key, "set", "SET", k, data, "PX", ttl_millis(check_ttl(ttl)))

    async def set_if_absent(
        self, key: str, value: bytes | str, *, ttl: float | None = None
    ) -> bool:
        k, data = self._k(key), check_value(value)
        extra: list[Arg] = [] if ttl is None else ["PX", ttl_millis(check_ttl(ttl))]
        return await self._cmd(key, "set_if_absent", "SET", k, data, "NX", *extra) is not None

    async def compare_and_set(
        self,
        key: str,
        expected: bytes | str | None,
        value: bytes | str,
        *,
        ttl: float | None = None,
    ) -> bool:
        return bool(await self._compare_and_set([key], cas_args(expected, value, ttl)))

    async def delete(self, *keys: str) -> int:
        ks = [self._prefix + k for k in dict.fromkeys(check_keys(keys))]
        if not ks:
            return 0
        return sum(int(reply) for _, reply in await self._per_slot("delete", "DEL", ks))

    async def expire(self, key: str, ttl: float) -> bool:
        ms = ttl_millis(check_ttl(ttl))
        return bool(await self._cmd(key, "expire", "PEXPIRE", self._k(key), ms))

    async def ttl(self, key: str) -> float | None:
        ms = int(await self._cmd(key, "ttl", "PTTL", self._k(key)))
        return ttl_from_pttl(ms)

    async def incr(self, key: str, amount: int = 1) -> int:
        step = check_amount(amount)
        return int(await self._cmd(key, "incr", "INCRBY", self._k(key), step))

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        ks = [self._prefix + k for k in check_keys(keys)]
        out: list[bytes | None] = [None] * len(ks)
        for where, values in await self._per_slot("mget", "MGET", ks):
            for i, value in zip(where, values, strict=True):
                out[i] = None if value is None else bytes(value)
        return out

    async def scan(self, prefix: str = "") -> list[str]:
        if not isinstance(prefix, str):
            raise InvalidValueError(f"a scan prefix must be a string, not {prefix!r}")
        pattern = glob_escape(self._prefix + prefix) + "*"
        cut = len(self._prefix.encode())
        found: set[str] = set()

        async def one(address: tuple[str, int]) -> None:
            cursor = b"0"
            while True:
                command = pack_command("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
                cursor, batch = await self._run(
                    None, "scan", self._cluster.call_on(address, command)
                )
                for raw in batch:
                    found.add(bytes(raw)[cut:].decode("utf-8", errors="surrogateescape"))
                if cursor == b"0":
                    return

        primaries = await self._run(None, "scan", self._cluster.primaries())
        await asyncio.gather(*[one(a) for a in primaries])
        return sorted(found)

    # -- sorted sets -----------------------------------------------------------------

    async def zadd(self, key: str, mapping: dict[str, float]) -> int:
        k = self._k(key)
        if not isinstance(mapping, dict):
            raise InvalidValueError(f"zadd takes a dict of member -> score, not {mapping!r}")
        pairs = {check_member(m): check_score(s) for m, s in mapping.items()}
        if not pairs:
            return 0
        flat: list[Arg] = []
        for member, score in pairs.items():
            flat += [score, member]
        return int(await self._cmd(key, "zadd", "ZADD", k, *flat))

    async def zscore(self, key: str, member: str) -> float | None:
        m = check_member(member)
        score = await self._cmd(key, "zscore", "ZSCORE", self._k(key), m)
        return None if score is None else _float(score)

    async def zincrby(self, key: str, member: str, amount: float) -> float:
        m, step = check_member(member), check_score(amount, "increment")
        return _float(await self._cmd(key, "zincrby", "ZINCRBY", self._k(key), step, m))

    async def zrange(
        self, key: str, start: int, stop: int, *, desc: bool = False
    ) -> list[tuple[str, float]]:
        first, last = check_index(start, "start"), check_index(stop, "stop")
        extra: list[Arg] = ["REV"] if desc else []
        rows = await self._cmd(
            key, "zrange", "ZRANGE", self._k(key), first, last, *extra, "WITHSCORES"
        )
        return [(bytes(rows[i]).decode(), _float(rows[i + 1])) for i in range(0, len(rows), 2)]

    async def zrank(self, key: str, member: str, *, desc: bool = False) -> int | None:
        m = check_member(member)
        rank = await self._cmd(key, "zrank", "ZREVRANK" if desc else "ZRANK", self._k(key), m)
        return None if rank is None else int(rank)

    async def zrem(self, key: str, *members: str) -> int:
        k = self._k(key)
        ms = [check_member(m) for m in members]
        if not ms:
            return 0
        return int(await self._cmd(key, "zrem", "ZREM", k, *ms))

    # -- rate limiting ---------------------------------------------------------------

    async def rate_limit(self, key: str, limit: int, window: float) -> RateLimit:
        most, seconds = check_limit(limit, window)
        allowed, remaining, retry = await self._limiter(
            [key], [most, repr(seconds), uuid.uuid4().hex]
        )
        return RateLimit(
            allowed=bool(allowed), remaining=int(remaining), retry_after=max(0.0, _float(retry))
        )


class RedisClusterScript:
    """A Lua script bound to one :class:`RedisClusterKeyValueStore`; call it with keys
    (of one slot) and arguments."""

    __slots__ = ("_script", "_store", "name")

    def __init__(self, store: RedisClusterKeyValueStore, script: RespScript, name: str) -> None:
        self._store = store
        self._script = script
        self.name = name

    @property
    def sha(self) -> str:
        return self._script.sha

    async def __call__(self, keys: Sequence[str], args: Sequence[Arg] = ()) -> Any:
        return await self._store._eval(self._script, self.name, keys, args)


def _mapped(text: str, op: str, key: str | None, where: str) -> MultistoreError:
    head = text.split(" script:")[0]
    if text.startswith("WRONGTYPE") or "WRONGTYPE" in head:
        return WrongTypeError(f"{op} on key {key!r}, which holds another kind of value (WRONGTYPE)")
    if "not an integer" in text or "overflow" in text:
        return InvalidValueError(
            f"{op}: the value at key {key!r} is not a 64-bit integer or would overflow ({text})"
        )
    if "NaN" in text:
        return InvalidValueError(f"{op} on key {key!r}: the score would be NaN")
    return StoreError(f"Redis error: {where}: {text}")
