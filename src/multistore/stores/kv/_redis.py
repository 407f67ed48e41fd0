"""The Redis key-value backend, on the lean RESP2 client.

Every interface operation is one Redis command, except :meth:`rate_limit` and
:meth:`compare_and_set`, which are one Lua script each (so atomic on the server).
Keys get the URL's ``prefix`` option in front (``redis://host:6379/0?prefix=shop:``),
so several stores can share one Redis database; :meth:`scan` matches the prefix
literally (``*``, ``?``, ``[`` and ``\\`` are escaped for ``SCAN MATCH``) and strips it
again.

Commands travel on the package's one Redis transport (:mod:`multistore._redis_link`):
the lean client of :mod:`multistore._resp` (replies parsed by hiredis) over TCP, or
redis-py's connections for TLS (``rediss://``, ``?ssl=true``). A redis-py asyncio round
trip costs about 5 times the lean one's client work; the lean one is what a caller meets.

Errors: a refused connection is :class:`StoreUnavailableError`, definite (the command
was not sent); a connection lost after sending is :class:`StoreUnavailableError` and no
answer within the URL's ``timeout`` (default 5 s; waiting for a free connection and
connecting included) :class:`StoreTimeoutError`, both indeterminate. ``WRONGTYPE`` is
:class:`~multistore.stores.kv.WrongTypeError`, and a value ``INCRBY`` cannot add to is
:class:`InvalidValueError`. A command is sent once, never retried, so a non-idempotent
``incr`` is never applied twice behind the caller's back. A connection the server closed
(after a restart) is noticed before it is used again, so the store works again as soon as
the server is back.

URL options: ``timeout``, ``connect_timeout`` (default: ``timeout``), ``pool_max``
(default 10), ``ssl``, ``prefix``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Self

from multistore._redis_link import RedisPyLink, connection_error, open_link
from multistore._resp import Arg, RespConnectionError, RespError, RespPool, RespScript, pack_command
from multistore.errors import MultistoreError, Outcome, UsageError
from multistore.stores._limits import short_repr
from multistore.stores._registry import missing_driver
from multistore.stores.kv._checks import check_keys, check_prefix
from multistore.stores.kv._redis_base import (
    RespKeyValueStore,
    RespKvScript,
    reply_error,
)
from multistore.stores.kv._redis_lua import glob_escape
from multistore.urls import StoreURL

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = ["RedisKeyValueStore", "RedisScript"]

RedisScript = RespKvScript
"""A Lua script bound to one :class:`RedisKeyValueStore` (from its ``script()``)."""

_PING = pack_command("PING")


def _where(url: StoreURL, op: str, key: str | None) -> str:
    return f"{op} on {url}" + (f" (key {short_repr(key)})" if key is not None else "")


class RedisKeyValueStore(RespKeyValueStore):
    """Key-value store on a Redis server. See the module docstring."""

    def __init__(self, url: StoreURL, link: RespPool | RedisPyLink) -> None:
        self._link = link
        self._call = link.call
        self._native: aioredis.Redis | None = None
        self._setup(url)

    @classmethod
    async def open(cls, url: StoreURL) -> Self:
        try:
            link = open_link(url)
        except ImportError as exc:  # TLS goes through redis-py, an optional extra
            raise missing_driver(url.scheme, exc) from None
        store = cls(url, link)
        try:
            await store._run(None, "connect", _PING)
        except MultistoreError as exc:
            await store._link.aclose()
            exc.outcome = Outcome.DEFINITE
            raise
        return store

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._run_close_callbacks()
            finally:
                await self._link.aclose()
                if self._native is not None:
                    await self._native.aclose()

    @property
    def native(self) -> aioredis.Redis:
        """A ``redis.asyncio.Redis`` client to the same server and database, made on
        first use and closed with the store (keys are not prefixed for you)."""
        if self._native is None:
            import redis.asyncio as aioredis

            url = self.url
            self._native = aioredis.Redis(
                host=url.host or "127.0.0.1",
                port=url.port or 6379,
                db=int(url.database or 0),
                username=url.username,
                password=url.password,
                ssl=bool(url.option("ssl", False)),
            )
        return self._native

    # -- plumbing --------------------------------------------------------------------

    async def _run(self, key: str | None, op: str, command: bytes, fallback: Any = None) -> Any:
        if self._closed:
            raise UsageError(f"the key-value store {self.url} is closed")
        try:
            return await self._call(command, fallback)
        except RespError as exc:
            raise reply_error(exc.message, op, key, _where(self.url, op, key)) from None
        except RespConnectionError as exc:
            raise connection_error(exc, _where(self.url, op, key), "Redis") from exc

    async def _cmd(self, key: str, op: str, name: str, k: str, *rest: Arg) -> Any:
        return await self._run(key, op, pack_command(name, k, *rest))

    async def _eval(
        self, script: RespScript, name: str, keys: Sequence[str], args: Sequence[Arg]
    ) -> Any:
        command, fallback = script.pack([self._k(k) for k in keys], args)
        return await self._run(keys[0] if keys else None, name, command, fallback)

    # -- several keys ----------------------------------------------------------------

    async def delete(self, *keys: str) -> int:
        ks = [self._prefix + k for k in dict.fromkeys(check_keys(keys))]
        if not ks:
            return 0
        return int(await self._run(None, "delete", pack_command("DEL", *ks)))

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        ks = [self._prefix + k for k in check_keys(keys)]
        if not ks:
            return []
        values = await self._run(None, "mget", pack_command("MGET", *ks))
        return [None if v is None else bytes(v) for v in values]

    async def scan(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        pattern = glob_escape(self._prefix + prefix) + "*"
        cut = len(self._prefix.encode())
        found: set[str] = set()
        cursor = b"0"
        while True:
            command = pack_command("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            cursor, batch = await self._run(None, "scan", command)
            for raw in batch:
                found.add(bytes(raw)[cut:].decode("utf-8", errors="surrogateescape"))
            if cursor == b"0":
                return sorted(found)
