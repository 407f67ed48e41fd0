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
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Final, Self

from multistore._redis_link import connection_error
from multistore._resp import (
    Arg,
    RespConnectionError,
    RespError,
    RespScript,
    pack_command,
)
from multistore._resp_cluster import RespCluster, key_slot
from multistore.errors import (
    InvalidValueError,
    MultistoreError,
    Outcome,
    StoreTimeoutError,
    UsageError,
)
from multistore.stores.kv._checks import check_keys
from multistore.stores.kv._redis_base import RespKeyValueStore, RespKvScript, reply_error
from multistore.stores.kv._redis_lua import glob_escape
from multistore.urls import StoreURL

__all__ = ["RedisClusterKeyValueStore", "RedisClusterScript"]

RedisClusterScript = RespKvScript
"""A Lua script bound to one :class:`RedisClusterKeyValueStore`; its keys (prefixed)
must share one slot."""

_WRITES: Final = frozenset(
    {"SET", "DEL", "PEXPIRE", "INCRBY", "ZADD", "ZINCRBY", "ZREM", "EVALSHA", "EVAL"}
)


class RedisClusterKeyValueStore(RespKeyValueStore):
    """Key-value store on a Redis Cluster. See the module docstring."""

    def __init__(self, url: StoreURL, cluster: RespCluster) -> None:
        self._cluster = cluster
        self._wait = url.int_option("wait_replicas", 0)
        self._wait_ms = max(1, round(url.float_option("wait_timeout", 1.0) * 1000))
        self._wait_command = pack_command("WAIT", self._wait, self._wait_ms)
        self._setup(url)

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
            try:
                self._run_close_callbacks()
            finally:
                self._cluster.close()

    @property
    def native(self) -> RespCluster:
        """The cluster client (keys are not prefixed for you)."""
        return self._cluster

    # -- plumbing --------------------------------------------------------------------

    async def _run(self, key: str | None, op: str, call: Any) -> Any:
        """Await ``call`` (a cluster call) with errors mapped for ``op``."""
        if self._closed:
            call.close()
            raise UsageError(f"the key-value store {self.url} is closed")
        where = f"{op} on {self.url}" + (f" (key {key!r})" if key is not None else "")
        try:
            return await call
        except RespError as exc:
            raise reply_error(exc.message, op, key, where) from None
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

    async def delete(self, *keys: str) -> int:
        ks = [self._prefix + k for k in dict.fromkeys(check_keys(keys))]
        if not ks:
            return 0
        return sum(int(reply) for _, reply in await self._per_slot("delete", "DEL", ks))

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
