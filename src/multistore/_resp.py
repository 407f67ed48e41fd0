"""A lean asyncio client for Redis' RESP2 protocol: just enough to run scripts and
commands on the hot paths (idempotency records, quorum replicas): one packed command,
one reply, on a small pool of plain TCP connections.

redis-py's asyncio client costs 165-183 us per round trip here, most of it client
work (pool bookkeeping, a readiness probe, timeout wrappers, stream reader); a bare
:class:`asyncio.Protocol` costs about 35 us. This module is that protocol, plus:
``AUTH``/``SELECT`` on connect, a per-command deadline, and a pool
that drops a connection on any failure (the next command opens a fresh one, so a
restarted server is survived). Replies are parsed by ``hiredis`` when it is installed
(it comes with the ``redis`` extra), else by the pure-Python :class:`RespReader`: the
same values either way. TLS and Unix sockets are not supported: callers use redis-py for
those URLs.

:meth:`RespPool.send` starts a command and hands its reply to a callback, with no
task or coroutine in between, so a caller fanning one request out to several servers
(the quorum coordinator) pays for no more than the writes and the replies;
:meth:`RespPool.call` is the same as a coroutine. :class:`RespScript` packs a Lua
script's ``EVALSHA`` with its ``EVAL`` fallback.

Failures surface as :class:`RespError` (an error reply; the connection stays usable),
:class:`RespTimeoutError` and :class:`RespConnectionError`; the last two say whether
the command may have reached the server (``sent``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import select
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final, Protocol, TypeAlias

__all__ = [
    "HIREDIS",
    "INCOMPLETE",
    "Arg",
    "Done",
    "Reader",
    "RespConnectionError",
    "RespError",
    "RespPool",
    "RespProtocolError",
    "RespReader",
    "RespScript",
    "RespTimeoutError",
    "bulk",
    "new_reader",
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


Arg: TypeAlias = str | bytes | int | float
"""A command argument (numbers are sent as their ``repr``)."""


def bulk(value: Arg) -> bytes:
    """One RESP bulk string (numbers as their ``repr``)."""
    if isinstance(value, str):
        data = value.encode()
    elif isinstance(value, bytes):
        data = value
    else:
        data = repr(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def pack_command(*parts: Arg) -> bytes:
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
    """Replies from a byte stream fed in arbitrary pieces (pure Python; the same
    methods as ``hiredis.Reader``, which :func:`new_reader` prefers)."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> None:
        self._buf = self._buf + data if self._buf else data

    @property
    def pending(self) -> int:
        """Bytes received but not yet returned as a reply."""
        return len(self._buf)

    def has_data(self) -> bool:
        """True when bytes were received that no reply returned yet."""
        return bool(self._buf)

    def pop(self) -> object:
        """The next whole reply, or :data:`INCOMPLETE`."""
        if not self._buf:
            return INCOMPLETE
        reply, end = _parse(self._buf, 0, 0)
        if reply is not INCOMPLETE:
            self._buf = self._buf[end:]
        return reply

    gets = pop


class Reader(Protocol):
    """What a connection reads replies with: :class:`RespReader` or ``hiredis.Reader``."""

    def feed(self, data: bytes, /) -> None: ...

    def gets(self) -> object: ...

    def has_data(self) -> bool: ...


try:  # an optional speed-up: the pure-Python reader gives the same values
    import hiredis as _hiredis
except ImportError:  # pragma: no cover -- installed with the redis extra
    _hiredis = None  # type: ignore[assignment]

HIREDIS: Final = _hiredis is not None
"""True when replies are parsed by ``hiredis`` (installed with the ``redis`` extra): the
same values as :class:`RespReader` gives, 4-8 times faster. It checks less: a RESP3 reply
type waits for more data instead of failing, lines have no length limit, and the CRLF
after a bulk string is not checked (this client speaks RESP2 to Redis servers only)."""


def new_reader() -> Reader:
    """A reader for one connection: ``hiredis.Reader`` when installed, else :class:`RespReader`."""
    if _hiredis is None:
        return RespReader()
    reader: Reader = _hiredis.Reader(
        replyError=RespError, protocolError=RespProtocolError, notEnoughData=INCOMPLETE
    )
    return reader


# -- scripts ----------------------------------------------------------------------


class RespScript:
    """A Lua script run with ``EVALSHA``, packed with its ``EVAL`` twin for a server
    that does not have it yet (pass both to :meth:`RespPool.send` or :meth:`RespPool.call`)."""

    __slots__ = ("_eval", "_evalsha", "body", "sha")

    def __init__(self, body: str) -> None:
        self.body = body
        self.sha = hashlib.sha1(body.encode(), usedforsecurity=False).hexdigest()
        self._evalsha = bulk("EVALSHA") + bulk(self.sha)
        self._eval = bulk("EVAL") + bulk(body)

    def pack(self, keys: Sequence[Arg], args: Sequence[Arg]) -> tuple[bytes, Callable[[], bytes]]:
        """``(EVALSHA command, a function packing the same call as EVAL)``."""
        n = len(keys)
        head = b"*%d\r\n" % (3 + n + len(args))
        numkeys = _NUMKEYS[n] if n < len(_NUMKEYS) else bulk(n)
        command = b"".join((head, self._evalsha, numkeys, _bulks((*keys, *args))))
        body, cut = self._eval, len(head) + len(self._evalsha)
        return command, lambda: head + body + command[cut:]


_NUMKEYS: Final = tuple(bulk(n) for n in range(8))


def _bulks(parts: tuple[Arg, ...]) -> bytes:
    """``b"".join(bulk(p) for p in parts)``, in C loops when every part is a string
    (the common case: this is on every script call's path)."""
    try:
        data = list(map(str.encode, parts))  # type: ignore[arg-type]
    except TypeError:  # bytes or numbers among them
        return b"".join([bulk(p) for p in parts])
    if not data:
        return b""
    heads = map(b"$%d\r\n".__mod__, map(len, data))  # "$<length>\r\n" of each
    return b"\r\n".join(map(b"".join, zip(heads, data, strict=True))) + b"\r\n"


# -- connections ------------------------------------------------------------------

Done = Callable[[object], None]
"""What :meth:`RespPool.send` calls with the reply, or with the failure (a
:class:`RespError` reply, a :class:`RespConnectionError` or :class:`RespTimeoutError`)."""


class _Request:
    """One command: sent on a connection, queued for one, or waiting for one to open."""

    __slots__ = (
        "command",
        "conn",
        "deadline",
        "done",
        "expected",
        "fallback",
        "finished",
        "replies",
    )

    def __init__(
        self, command: bytes, fallback: Callable[[], bytes] | None, done: Done, count: int = 1
    ) -> None:
        self.command = command
        self.fallback = fallback
        self.done = done
        self.expected = count
        """How many replies answer it (several commands pipelined as one request)."""
        self.replies: list[object] = []
        self.deadline = 0.0
        self.conn: _Connection | None = None
        """The connection it was written to (None: not sent)."""
        self.finished = False


class _Connection(asyncio.Protocol):
    """One TCP connection, one request in flight at a time; replies go to the pool."""

    def __init__(self, pool: RespPool) -> None:
        self._pool = pool
        self._transport: asyncio.Transport | None = None
        self._reader = new_reader()
        self._poll = select.poll()
        self.request: _Request | None = None
        self.ready = False
        """Greeted (``AUTH``/``SELECT`` done): the pool's to hand out."""
        self.broken = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._poll.register(transport.get_extra_info("socket").fileno(), select.POLLIN)

    def start(self, request: _Request) -> None:
        self.request = request
        request.conn = self
        assert self._transport is not None
        self._transport.write(request.command)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        request = self.request
        if request is None:
            self._fail(RespProtocolError("Redis sent data nobody asked for"))
            return
        try:
            reply = reader.gets()
            if request.expected > 1:  # pipelined: all the replies, as a list
                while reply is not INCOMPLETE:
                    request.replies.append(reply)
                    if len(request.replies) == request.expected:
                        reply = request.replies
                        break
                    reply = reader.gets()
        except RespProtocolError as exc:
            self._fail(exc)
            return
        if reply is INCOMPLETE:
            return
        fallback = request.fallback
        if (
            fallback is not None
            and isinstance(reply, RespError)
            and reply.message.startswith("NOSCRIPT")
        ):
            request.fallback = None
            assert self._transport is not None
            self._transport.write(fallback())
            return
        self.request = None
        self._pool._answered(self, request, reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.broken = True
        request, self.request = self.request, None
        if request is not None:
            self._pool._failed(request, exc or ConnectionResetError("the server closed it"))
        self._pool._lost(self)

    def _fail(self, exc: BaseException) -> None:
        self.broken = True
        request, self.request = self.request, None
        if self._transport is not None:
            self._transport.abort()
        if request is not None:
            self._pool._failed(request, exc)

    def abort(self) -> None:
        """Drop the connection now, a reply in flight unread (its request is answered)."""
        self.broken = True
        self.request = None
        if self._transport is not None:
            self._transport.abort()

    def stale(self) -> bool:
        """True when an idle connection is unusable: failed, closed by the server (a
        restart: its end-of-stream is readable before the loop has seen it), or
        holding bytes nobody asked for."""
        return self.broken or bool(self._poll.poll(0)) or self._reader.has_data()

    def close(self) -> None:
        self.broken = True
        if self._transport is not None:
            self._transport.close()


def _settle(future: asyncio.Future[object], result: object) -> None:
    if not future.done():
        future.set_result(result)


class RespPool:
    """Up to ``max_connections`` connections to one Redis database; each command has
    ``timeout`` seconds (waiting for a connection and connecting included).

    :meth:`send` starts a command and calls back with its reply — no task, no
    coroutine: on an idle connection the command is written before it returns, and
    the reply is handed over from the protocol's ``data_received``. :meth:`call` is
    the same as a coroutine. A command that finds no idle connection opens one (up to
    ``max_connections``) or waits, in order, for one to come free. A pool serves the
    event loop it is first used in.
    """

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
        self.max_connections = max_connections
        self._hello: list[tuple[str, bytes]] = []
        if password:
            auth = ("AUTH", username, password) if username else ("AUTH", password)
            self._hello.append(("AUTH", pack_command(*auth)))
        if db:
            self._hello.append(("SELECT", pack_command("SELECT", db)))
        self._idle: list[_Connection] = []
        self._live: set[_Connection] = set()
        """Greeted connections, idle or busy."""
        self._connecting = 0
        self._queue: deque[_Request] = deque()
        """Commands waiting for a connection to come free."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: deque[_Request] = deque()
        """Commands not known to be finished, oldest first: with one timeout for all,
        that is deadline order, so one timer serves them all (armed for the oldest)."""
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def send(self, command: bytes, done: Done, fallback: Callable[[], bytes] | None = None) -> None:
        """Start ``command`` (packed); ``done`` gets its reply once, never before this
        returns: the reply, or a :class:`RespError` (an error reply), a
        :class:`RespTimeoutError` or a :class:`RespConnectionError` (the connection is
        dropped), as a value. On a ``NOSCRIPT`` error reply ``fallback()`` is sent on
        the same connection instead. ``done`` runs inside the event loop's I/O
        callback: it should be quick, and not raise."""
        self._submit(command, fallback, done)

    async def call(
        self, command: bytes, fallback: Callable[[], bytes] | None = None, *, count: int = 1
    ) -> object:
        """:meth:`send` as a coroutine: returns the reply, raises the failure. Cancelled
        before the command was sent, it is never sent; after, its reply is read and
        dropped. ``count`` > 1: ``command`` is that many commands packed one after the
        other, sent together on one connection (``ASKING`` then a command; a write then
        ``WAIT``); the reply is the list of their replies, error replies included as
        :class:`RespError` values (``fallback`` is not used)."""
        future = self._running_loop().create_future()
        request = self._submit(command, fallback, functools.partial(_settle, future), count)
        try:
            reply = await future
        except asyncio.CancelledError:
            self._withdraw(request)
            raise
        if isinstance(reply, (RespError, RespConnectionError)):
            raise reply
        return reply

    def close(self, *, now: bool = False) -> None:
        """Close idle connections now and busy ones when their command ends (``now``:
        at once too, their commands failing as sent); commands waiting for a
        connection fail (not sent)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            self._drop(conn)
        if now:
            for conn in list(self._live):
                request = conn.request
                self._live.discard(conn)
                conn.abort()
                if request is not None:
                    self._failed(request, ConnectionAbortedError("the pool was closed"))
        queue = list(self._queue)
        self._queue.clear()
        for request in queue:
            self._complete(
                request, RespConnectionError("the connection pool is closed", sent=False)
            )

    async def aclose(self) -> None:
        """:meth:`close` (as a coroutine, like :class:`~multistore._redis_link.RedisPyLink`'s)."""
        self.close()

    # -- internals ------------------------------------------------------------------

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the pool serves: the one it was first used in (asked once:
        on Python 3.11 :func:`asyncio.get_running_loop` costs a ``getpid`` system call)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        elif loop.is_closed():
            raise RuntimeError("a RespPool serves one event loop, and that loop is closed")
        return loop

    def _submit(
        self, command: bytes, fallback: Callable[[], bytes] | None, done: Done, count: int = 1
    ) -> _Request:
        loop = self._running_loop()
        request = _Request(command, None if count > 1 else fallback, done, count)
        if self._closed:
            request.finished = True
            loop.call_soon(done, RespConnectionError("the connection pool is closed", sent=False))
            return request
        request.deadline = deadline = loop.time() + self.timeout
        pending = self._pending
        while pending and pending[0].finished:
            pending.popleft()
        pending.append(request)
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._sweep)
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.stale():
                conn.start(request)
                return request
            self._drop(conn)
        if len(self._live) + self._connecting < self.max_connections:
            self._grow(request)
        else:
            self._queue.append(request)
        return request

    def _grow(self, request: _Request) -> None:
        self._connecting += 1
        task = self._running_loop().create_task(self._open_for(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open_for(self, request: _Request) -> None:
        """A new connection for ``request`` (or, if it is gone by then, the next one)."""
        try:
            conn = await self._connect()
        except TimeoutError:
            self._connecting -= 1
            where = f"{self.host}:{self.port} within {self.connect_timeout} s"
            self._complete(request, RespTimeoutError(f"no connection to {where}", sent=False))
            self._serve_queue()
            return
        except (OSError, RespConnectionError, RespProtocolError) as exc:
            self._connecting -= 1
            if not isinstance(exc, RespConnectionError):
                failure = RespConnectionError(f"{self.host}:{self.port}: {exc}", sent=False)
                failure.__cause__ = exc
                exc = failure
            self._complete(request, exc)
            self._serve_queue()
            return
        except BaseException:
            self._connecting -= 1
            raise
        self._connecting -= 1
        self._live.add(conn)
        self._dispatch(conn, request)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):
            _, conn = await loop.create_connection(lambda: _Connection(self), self.host, self.port)
            try:
                for name, command in self._hello:
                    future: asyncio.Future[object] = loop.create_future()
                    conn.start(_Request(command, None, functools.partial(_settle, future)))
                    reply = await future
                    if isinstance(reply, RespConnectionError):
                        raise RespConnectionError(str(reply), sent=False) from reply
                    if isinstance(reply, RespError):
                        raise RespConnectionError(f"{name} refused: {reply.message}", sent=False)
            except BaseException:
                conn.close()
                raise
        conn.ready = True
        return conn

    def _dispatch(self, conn: _Connection, request: _Request | None = None) -> None:
        """Give a free connection work: ``request`` if it still waits, else the next
        queued command; else it goes idle (or is closed, the pool being closed)."""
        if request is not None and not request.finished:
            conn.start(request)
            return
        if self._closed or conn.broken:
            self._drop(conn)
            return
        queue = self._queue
        if queue:
            conn.start(queue.popleft())
            return
        self._idle.append(conn)

    def _serve_queue(self) -> None:
        """Open connections for queued commands while there is room."""
        queue = self._queue
        while queue and not self._closed:
            if len(self._live) + self._connecting >= self.max_connections:
                return
            self._grow(queue.popleft())

    def _answered(self, conn: _Connection, request: _Request, reply: object) -> None:
        if conn.ready:
            self._dispatch(conn)
        self._complete(request, reply)

    def _failed(self, request: _Request, exc: BaseException) -> None:
        failure = RespConnectionError(f"{self.host}:{self.port}: {exc}", sent=True)
        failure.__cause__ = exc
        self._complete(request, failure)

    def _lost(self, conn: _Connection) -> None:
        self._live.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        self._serve_queue()

    def _drop(self, conn: _Connection) -> None:
        self._live.discard(conn)
        conn.close()

    def _sweep(self) -> None:
        """Expire the commands past their deadline; wake up again for the next one."""
        self._timer = None
        loop = self._running_loop()
        now = loop.time()
        pending = self._pending
        while pending:
            head = pending[0]
            if head.finished:
                pending.popleft()
            elif head.deadline > now:
                self._timer = loop.call_at(head.deadline, self._sweep)
                return
            else:
                pending.popleft()
                self._expire(head)

    def _expire(self, request: _Request) -> None:
        conn = request.conn
        if conn is None:  # queued, or its connection is still being made
            with contextlib.suppress(ValueError):
                self._queue.remove(request)
            where, sent = "connection", False
        else:  # its late reply must never be read as another command's
            self._live.discard(conn)
            conn.abort()
            where, sent = "reply", True
        self._complete(
            request,
            RespTimeoutError(
                f"no {where} from {self.host}:{self.port} within {self.timeout} s", sent=sent
            ),
        )

    def _withdraw(self, request: _Request) -> None:
        """The caller gave up on ``request``: unsent, it is forgotten."""
        if request.finished or request.conn is not None:
            return
        with contextlib.suppress(ValueError):
            self._queue.remove(request)
        request.finished = True

    def _complete(self, request: _Request, result: object) -> None:
        if request.finished:
            return
        request.finished = True
        try:
            request.done(result)
        except Exception as exc:  # a callback's bug must not break the connection
            self._running_loop().call_exception_handler(
                {"message": "a RESP reply callback raised", "exception": exc}
            )
