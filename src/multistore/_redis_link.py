"""The one way the package reaches a single Redis server: a *link* from a URL.

:func:`open_link` reads a Redis URL once — ``redis://`` and ``rediss://`` through
:func:`multistore.urls.parse_url`, as every store URL — and answers the lean RESP2
client (:class:`~multistore._resp.RespPool`) for plain TCP, or a :class:`RedisPyLink`
for what the lean client lacks: TLS (``rediss://``, ``?ssl=true``) and Unix sockets
(``unix:///path/redis.sock?db=0``, read by redis-py). Both have the same two methods:
:meth:`~RedisPyLink.send` (the reply handed to a callback) and :meth:`~RedisPyLink.call`
(a coroutine that returns it); failures are the lean client's exceptions either way,
with ``sent`` telling whether the command may have reached the server.

The key-value store (and through it the idempotency records) and the quorum's Redis
nodes all open their connections here. Redis Cluster has its own router over the same
pools (:mod:`multistore._resp_cluster`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from multistore._resp import Done, RespConnectionError, RespError, RespPool, RespTimeoutError
from multistore.errors import (
    InvalidURLError,
    Outcome,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from multistore.urls import StoreURL, parse_url

if TYPE_CHECKING:  # redis is an optional extra, imported for the URLs that need it
    import redis.asyncio as aioredis

__all__ = ["Link", "RedisPyLink", "connection_error", "open_link", "redis_py_link"]


def connection_error(
    exc: RespConnectionError, where: str, server: str = "Redis Cluster"
) -> StoreError:
    """The store error for a failed command: definite only when it was never sent."""
    outcome = Outcome.INDETERMINATE if exc.sent else Outcome.DEFINITE
    if isinstance(exc, RespTimeoutError):
        return StoreTimeoutError(f"{server} did not answer in time: {where}", outcome=outcome)
    return StoreUnavailableError(f"{server} unreachable: {where}: {exc}", outcome=outcome)


class Link(Protocol):
    """Where commands to one Redis server go: :class:`RespPool` or :class:`RedisPyLink`."""

    def send(
        self, command: bytes, done: Done, fallback: Callable[[], bytes] | None = None
    ) -> None: ...

    async def call(self, command: bytes, fallback: Callable[[], bytes] | None = None) -> object: ...

    def close(self) -> None: ...

    async def aclose(self) -> None: ...


class RedisPyLink:
    """:class:`RespPool`'s ``send``/``call`` over a redis-py client, for the URLs the
    lean client cannot serve (TLS, Unix sockets): each command on a connection of the
    client's pool, sent and read directly (no ``execute_command`` hooks or retries),
    failures raised (or given to ``done``) as the lean client's exceptions."""

    def __init__(self, client: aioredis.Redis, timeout: float) -> None:
        from redis import exceptions as rex

        self.client = client
        self.timeout = timeout
        self._pool: Any = client.connection_pool  # redis-py: partly untyped
        self._rex = rex
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, command: bytes, done: Done, fallback: Callable[[], bytes] | None = None) -> None:
        task = asyncio.get_running_loop().create_task(self._send(command, done, fallback))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, command: bytes, done: Done, fallback: Callable[[], bytes] | None) -> None:
        reply: object
        try:
            reply = await self.call(command, fallback)
        except (RespError, RespConnectionError) as exc:
            reply = exc
        done(reply)

    async def call(self, command: bytes, fallback: Callable[[], bytes] | None = None) -> object:
        """The reply to ``command``; raises :class:`RespError` for an error reply,
        :class:`RespTimeoutError` or :class:`RespConnectionError` (``sent`` set)."""
        rex = self._rex
        sent = False
        try:
            async with asyncio.timeout(self.timeout):
                conn = await self._pool.get_connection()
                try:
                    sent = True
                    # as redis-py does: on any failure but an error reply the connection
                    # disconnects itself, so the pool never hands out a half-read one
                    await conn.send_packed_command(command, False)
                    try:
                        return await conn.read_response()
                    except rex.NoScriptError:
                        if fallback is None:
                            raise
                        await conn.send_packed_command(fallback(), False)
                        return await conn.read_response()
                finally:
                    await self._pool.release(conn)
        except rex.ResponseError as exc:
            raise RespError(str(exc)) from None
        except (TimeoutError, rex.TimeoutError) as exc:
            where = "reply" if sent else "connection"
            raise RespTimeoutError(f"no {where} within {self.timeout} s", sent=sent) from exc
        except (rex.RedisError, OSError) as exc:
            raise RespConnectionError(str(exc), sent=sent) from exc

    def close(self) -> None:
        """Nothing to do at once: redis-py closes its connections in :meth:`aclose`."""

    async def aclose(self) -> None:
        await self.client.aclose()


def redis_py_link(
    url: str | StoreURL, *, timeout: float, connect_timeout: float, max_connections: int
) -> RedisPyLink:
    """A :class:`RedisPyLink` for ``url``: a URL text as redis-py reads it (a Unix socket
    URL), or a parsed URL, over TLS. RESP2, as the lean client speaks."""
    import redis.asyncio as aioredis
    from redis.asyncio.connection import BlockingConnectionPool, SSLConnection
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    options: dict[str, Any] = {
        "socket_timeout": None,  # each command has the link's deadline instead
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(NoBackoff(), 0),
        "max_connections": max_connections,  # more callers wait for one to come free
        "timeout": None,
        "protocol": 2,  # redis-py 8 speaks RESP3 unless told: other reply shapes
    }
    if isinstance(url, str):  # a Unix socket URL, as redis-py reads it
        pool = BlockingConnectionPool.from_url(url, **options)
    else:
        pool = BlockingConnectionPool(
            connection_class=SSLConnection,
            host=url.host or "127.0.0.1",
            port=url.port or 6379,
            db=int(url.database or 0),
            username=url.username,
            password=url.password,
            **options,
        )
    return RedisPyLink(aioredis.Redis.from_pool(pool), timeout)


def open_link(
    url: str | StoreURL,
    *,
    timeout: float | None = None,
    connect_timeout: float | None = None,
    max_connections: int | None = None,
) -> RespPool | RedisPyLink:
    """The link a Redis URL describes (no I/O yet). Keyword arguments given win over
    the URL's ``timeout`` (default 5 s), ``connect_timeout`` (default: ``timeout``) and
    ``pool_max`` (default 10) options. Raises InvalidURLError for a bad URL."""
    if isinstance(url, str) and urlsplit(url).scheme == "unix":
        seconds = 5.0 if timeout is None else timeout
        connect = seconds if connect_timeout is None else connect_timeout
        return redis_py_link(
            url, timeout=seconds, connect_timeout=connect, max_connections=max_connections or 10
        )
    parsed = url if isinstance(url, StoreURL) else parse_url(url)
    if parsed.scheme != "redis":
        raise InvalidURLError(
            f"a {parsed.scheme}:// URL does not name one Redis server "
            "(redis://, rediss:// or unix://)"
        )
    seconds = parsed.float_option("timeout", 5.0) if timeout is None else timeout
    if connect_timeout is None:
        connect_timeout = parsed.float_option("connect_timeout", seconds)
    if max_connections is None:
        max_connections = parsed.int_option("pool_max", 10)
    if parsed.option("ssl", False):
        return redis_py_link(
            parsed,
            timeout=seconds,
            connect_timeout=connect_timeout,
            max_connections=max_connections,
        )
    return RespPool(
        parsed.host or "127.0.0.1",
        parsed.port or 6379,
        db=int(parsed.database or 0),
        username=parsed.username or None,
        password=parsed.password or None,
        timeout=seconds,
        connect_timeout=connect_timeout,
        max_connections=max_connections,
    )
