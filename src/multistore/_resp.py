"""A lean asyncio client for Redis' RESP2 protocol: just enough to run scripts and
commands on the hot paths (idempotency records, quorum replicas): one packed command,
one reply, on a small pool of plain TCP connections.

redis-py's asyncio client costs 165-183 us per round trip here, most of it client
work (pool bookkeeping, a readiness probe, timeout wrappers, stream reader); a bare
:class:`asyncio.Protocol` costs about 35 us. This module is that protocol, plus:
``AUTH``/``SELECT`` on connect, a per-command deadline, and a pool that drops a
connection on any failure (the next command opens a fresh one, so a restarted server
is survived). TLS is not supported: the caller uses redis-py for ``ssl`` URLs.

Failures surface as :class:`RespError` (an error reply; the connection stays usable),
:class:`RespTimeoutError` and :class:`RespConnectionError`; the last two say whether
the command may have reached the server (``sent``).
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Callable
from typing import Final

__all__ = [
    "INCOMPLETE",
    "RespConnectionError",
    "RespError",
    "RespPool",
    "RespProtocolError",
    "RespReader",
    "RespTimeoutError",
    "bulk",
    "pack_command",
    "parse_reply",
]

_MAX_LINE: Final = 64 * 1024
_MAX_BULK: Final = 512 * 1024 * 1024
_MAX_DEPTH: Final = 64


class RespError(Exception):
    """An error reply (``-ERR …``); ``message`` is its text without the ``-``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RespError) and other.message == self.message

    def __hash__(self) -> int:
        return hash(self.message)


class RespProtocolError(Exception):
    """The server sent something that is not a RESP2 reply."""


class RespConnectionError(Exception):
    """The connection failed; ``sent`` is True when the command may have reached the
    server (its outcome is unknown)."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class RespTimeoutError(RespConnectionError):
    """No reply within the deadline."""


class _Incomplete:
    def __repr__(self) -> str:
        return "INCOMPLETE"


INCOMPLETE: Final = _Incomplete()
"""What :func:`parse_reply` and :meth:`RespReader.pop` answer before a whole reply
has arrived."""


# -- encoding ---------------------------------------------------------------------


def bulk(value: str | bytes | int | float) -> bytes:
    """One RESP bulk string (numbers as their ``repr``)."""
    if isinstance(value, str):
        data = value.encode()
    elif isinstance(value, bytes):
        data = value
    else:
        data = repr(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def pack_command(*parts: str | bytes | int | float) -> bytes:
    """A command as a RESP array of bulk strings."""
    return b"*%d\r\n" % len(parts) + b"".join([bulk(p) for p in parts])


# -- decoding ---------------------------------------------------------------------


def _int(line: bytes) -> int:
    try:
        return int(line)
    except ValueError:
        raise RespProtocolError(f"not an integer in a RESP reply: {line[:40]!r}") from None


def _parse(buf: bytes, pos: int, depth: int) -> tuple[object, int]:
    end = buf.find(b"\r\n", pos)
    if end < 0:
        if len(buf) - pos > _MAX_LINE:
            raise RespProtocolError("a RESP reply line is too long")
        return INCOMPLETE, pos
    if end == pos:
        raise RespProtocolError("an empty RESP reply line")
    kind = buf[pos]
    line = buf[pos + 1 : end]
    nxt = end + 2
    if kind == 0x2B:  # + simple string
        return line, nxt
    if kind == 0x2D:  # - error
        return RespError(line.decode("utf-8", "replace")), nxt
    if kind == 0x3A:  # : integer
        return _int(line), nxt
    if kind == 0x24:  # $ bulk string
        n = _int(line)
        if n == -1:
            return None, nxt
        if n < 0 or n > _MAX_BULK:
            raise RespProtocolError(f"a bad RESP bulk length: {n}")
        if len(buf) < nxt + n + 2:
            return INCOMPLETE, pos
        if buf[nxt + n : nxt + n + 2] != b"\r\n":
            raise RespProtocolError("a RESP bulk string does not end with CRLF")
        return buf[nxt : nxt + n], nxt + n + 2
    if kind == 0x2A:  # * array
        n = _int(line)
        if n == -1:
            return None, nxt
        if n < 0:
            raise RespProtocolError(f"a bad RESP array length: {n}")
        if depth >= _MAX_DEPTH:
            raise RespProtocolError("RESP arrays nested too deeply")
        items: list[object] = []
        for _ in range(n):
            item, nxt = _parse(buf, nxt, depth + 1)
            if item is INCOMPLETE:
                return INCOMPLETE, pos
            items.append(item)
        return items, nxt
    raise RespProtocolError(f"an unknown RESP2 reply type: {bytes([kind])!r}")


def parse_reply(buf: bytes, pos: int = 0) -> tuple[object, int]:
    """The reply starting at ``buf[pos]`` and the offset after it, or
    ``(INCOMPLETE, pos)`` when it has not fully arrived. Simple and bulk strings are
    bytes, nil is None, an error reply is a :class:`RespError` value (not raised),
    arrays are lists. Raises :class:`RespProtocolError` on malformed input."""
    return _parse(buf, pos, 0)


class RespReader:
    """Replies from a byte stream fed in arbitrary pieces."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> None:
        self._buf = self._buf + data if self._buf else data

    @property
    def pending(self) -> int:
        """Bytes received but not yet returned as a reply."""
        return len(self._buf)

    def pop(self) -> object:
        """The next whole reply, or :data:`INCOMPLETE`."""
        if not self._buf:
            return INCOMPLETE
        reply, end = _parse(self._buf, 0, 0)
        if reply is not INCOMPLETE:
            self._buf = self._buf[end:]
        return reply


# -- connections ------------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One TCP connection, one request in flight at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._reader = RespReader()
        self._waiter: asyncio.Future[object] | None = None
        self._poll = select.poll()
        self.broken = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._poll.register(transport.get_extra_info("socket").fileno(), select.POLLIN)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiter = self._waiter
        if waiter is None:
            self._fail(RespProtocolError("Redis sent data nobody asked for"))
            return
        try:
            reply = self._reader.pop()
        except RespProtocolError as exc:
            self._fail(exc)
            return
        if reply is not INCOMPLETE:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.broken = True
        self._wake(exc if exc is not None else ConnectionResetError("the server closed it"))

    def _wake(self, exc: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _fail(self, exc: BaseException) -> None:
        self.broken = True
        self._wake(exc)
        if self._transport is not None:
            self._transport.abort()

    def stale(self) -> bool:
        """True when an idle connection is unusable: failed, closed by the server (a
        restart: its end-of-stream is readable before the loop has seen it), or
        holding bytes nobody asked for."""
        return self.broken or bool(self._poll.poll(0)) or self._reader.pending > 0

    async def request(self, data: bytes, within: float | None = None) -> object:
        """Send ``data`` and wait for one reply; after ``within`` seconds raise
        :class:`TimeoutError` and drop the connection (a late reply must not be read
        as the answer to the next command). One timer, not :func:`asyncio.timeout`:
        this is every command's path."""
        if self.broken or self._transport is None:
            raise ConnectionResetError("the connection is closed")
        waiter = self._loop.create_future()
        self._waiter = waiter
        self._transport.write(data)
        if within is None:
            return await waiter
        timer = self._loop.call_later(within, self._expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()

    def _expire(self, waiter: asyncio.Future[object]) -> None:
        if not waiter.done():
            self._fail(TimeoutError())

    def close(self) -> None:
        self.broken = True
        if self._transport is not None:
            self._transport.close()


class RespPool:
    """Up to ``max_connections`` connections to one Redis database; each command has
    ``timeout`` seconds (waiting for a connection and connecting included)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 5.0,
        connect_timeout: float | None = None,
        max_connections: int = 10,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self._hello: list[tuple[str, bytes]] = []
        if password:
            auth = ("AUTH", username, password) if username else ("AUTH", password)
            self._hello.append(("AUTH", pack_command(*auth)))
        if db:
            self._hello.append(("SELECT", pack_command("SELECT", db)))
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):
            _, conn = await loop.create_connection(lambda: _Connection(loop), self.host, self.port)
            try:
                for name, command in self._hello:
                    reply = await conn.request(command)
                    if isinstance(reply, RespError):
                        raise RespConnectionError(f"{name} refused: {reply.message}", sent=False)
            except BaseException:
                conn.close()
                raise
        return conn

    async def call(self, command: bytes, fallback: Callable[[], bytes] | None = None) -> object:
        """Send ``command`` (packed) and return its reply. On a ``NOSCRIPT`` error reply,
        send ``fallback()`` on the same connection instead. Raises :class:`RespError`
        for an error reply, :class:`RespTimeoutError` or :class:`RespConnectionError`
        (the connection is dropped)."""
        if self._closed:
            raise RespConnectionError("the connection pool is closed", sent=False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        sent = False
        try:
            if self._slots.locked() or not self._idle:
                # Wait for a slot or connect: bounded by the same deadline.
                async with asyncio.timeout_at(deadline):
                    conn = await self._checkout()
            else:  # the common case: a free slot and an idle connection, no waiting
                conn = await self._checkout()
            try:
                sent = True
                reply = await conn.request(command, max(0.0, deadline - loop.time()))
                if (
                    fallback is not None
                    and isinstance(reply, RespError)
                    and reply.message.startswith("NOSCRIPT")
                ):
                    reply = await conn.request(fallback(), max(0.0, deadline - loop.time()))
                if self._closed:
                    conn.close()
                else:
                    self._idle.append(conn)
            except BaseException:  # failed or cancelled mid-command
                conn.close()
                raise
            finally:
                self._slots.release()
        except TimeoutError:
            where = "reply" if sent else "connection"
            raise RespTimeoutError(
                f"no {where} from {self.host}:{self.port} within {self.timeout} s", sent=sent
            ) from None
        except (OSError, RespProtocolError) as exc:
            raise RespConnectionError(f"{self.host}:{self.port}: {exc}", sent=sent) from exc
        if isinstance(reply, RespError):
            raise reply
        return reply

    async def _checkout(self) -> _Connection:
        """Take a slot, then an idle connection that is still usable, else a new one;
        the slot is given back if that fails."""
        await self._slots.acquire()
        try:
            while self._idle:
                conn = self._idle.pop()
                if not conn.stale():
                    return conn
                conn.close()
            return await self._connect()
        except BaseException:
            self._slots.release()
            raise

    def close(self) -> None:
        """Close idle connections now and busy ones when their command ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
