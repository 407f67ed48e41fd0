"""A TCP proxy that can cut, blackhole or slow the connections it carries.

The proxy runs an asyncio server on its own background thread, so sync tests drive it
with plain method calls: put it between a client and a real server, then

- :meth:`TcpProxy.cut` aborts every open connection (the client sees a reset) and
  refuses new ones by closing them on accept, until :meth:`TcpProxy.restore`;
- :meth:`TcpProxy.blackhole` keeps connections open and accepts new ones but forwards
  nothing in either direction (a partition: requests hang); bytes already read are held
  and delivered after :meth:`TcpProxy.restore`, as TCP retransmission would;
- :meth:`TcpProxy.delay` adds latency to every chunk in both directions, without
  limiting throughput (each chunk is due ``seconds`` after it was read);
- :meth:`TcpProxy.cut_from` cuts only the connections that come from the given
  addresses (peers that bind their outgoing connections to a loopback address of
  their own, as Redis' ``bind-source-addr`` does): a partition between two servers
  behind their own proxies, the others left alone.

    with TcpProxy("127.0.0.1", redis.port) as proxy:
        client = redis_py.Redis(port=proxy.port)
        proxy.cut()
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
import time
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

__all__ = ["ProxyMode", "TcpProxy"]

_T = TypeVar("_T")
_CHUNK = 65536
_CALL_TIMEOUT = 10.0


class ProxyMode(enum.Enum):
    NORMAL = "normal"
    CUT = "cut"
    BLACKHOLE = "blackhole"


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()
        for task in self.tasks:
            task.cancel()


def _source(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if peer else ""


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target_host``:``target_port``, with fault modes."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self._port: int | None = None
        self._mode = ProxyMode.NORMAL
        self._delay = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._flowing: asyncio.Event | None = None
        self._accepted = 0
        self._handlers: set[asyncio.Task[Any]] = set()
        self._cut_sources: frozenset[str] = frozenset()

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"tcp-proxy-{self.target_port}", daemon=True
        )
        self._thread.start()
        self._call(self._serve())

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._shutdown())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_CALL_TIMEOUT)
        loop.close()
        self._loop = None
        self._thread = None
        self._server = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- state --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("TcpProxy is not started")
        return self._port

    @property
    def mode(self) -> ProxyMode:
        return self._mode

    @property
    def connections(self) -> int:
        """Connections currently open through the proxy."""
        return len(self._links)

    @property
    def accepted(self) -> int:
        """Connections accepted since start (including those closed on accept by ``cut``)."""
        return self._accepted

    # -- faults -------------------------------------------------------------------------

    def cut(self) -> None:
        """Abort every open connection and refuse new ones until :meth:`restore`."""
        self._call(self._set_mode(ProxyMode.CUT))

    def blackhole(self) -> None:
        """Hold every connection open but forward nothing until :meth:`restore`."""
        self._call(self._set_mode(ProxyMode.BLACKHOLE))

    def delay(self, seconds: float) -> None:
        """Deliver every chunk ``seconds`` late, in both directions (0 to stop)."""
        if seconds < 0:
            raise ValueError(f"delay must be >= 0, got {seconds}")
        self._delay = seconds

    def cut_from(self, *hosts: str) -> None:
        """Abort the connections from ``hosts`` and refuse theirs until
        :meth:`restore` (other clients go on as before)."""
        self._call(self._cut_from(frozenset(hosts)))

    async def _cut_from(self, hosts: frozenset[str]) -> None:
        self._cut_sources = self._cut_sources | hosts
        for link in list(self._links):
            if _source(link.client) in self._cut_sources:
                self._links.discard(link)
                link.abort()

    def restore(self) -> None:
        """Back to normal forwarding with no added delay, from every source."""
        self._delay = 0.0
        self._call(self._set_mode(ProxyMode.NORMAL))

    # -- event-loop side ----------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("TcpProxy is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_CALL_TIMEOUT)

    async def _serve(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, self.host, self._port or 0)
        self._port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        # Cut first, and let connections the loop has already accepted reach _handle
        # (which now aborts them): closing the server under a pending accept would leave
        # that client socket open and silent.
        await self._set_mode(ProxyMode.CUT)
        for _ in range(3):
            await asyncio.sleep(0)
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()
        self._links.clear()
        # Let every connection handler (their pumps are cancelled) finish before the loop
        # stops; cancelling the handlers themselves would upset asyncio's stream callback.
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=_CALL_TIMEOUT / 2)

    async def _set_mode(self, mode: ProxyMode) -> None:
        self._mode = mode
        if mode is ProxyMode.NORMAL:
            self._cut_sources = frozenset()
        assert self._flowing is not None
        if mode is ProxyMode.BLACKHOLE:
            self._flowing.clear()
        else:
            self._flowing.set()
        if mode is ProxyMode.CUT:
            for link in list(self._links):
                link.abort()
            self._links.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._accepted += 1
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)
        if self._mode is ProxyMode.CUT or _source(writer) in self._cut_sources:
            writer.transport.abort()
            return
        link = _Link(writer)
        self._links.add(link)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                return
            link.upstream = up_writer
            if link not in self._links:  # cut while connecting
                return
            link.tasks = [
                asyncio.ensure_future(self._pump(link, reader, up_writer)),
                asyncio.ensure_future(self._pump(link, up_reader, writer)),
            ]
            # A clean EOF is passed on as a half-close; an error aborts both sides.
            await asyncio.wait(link.tasks)
        finally:
            self._links.discard(link)
            link.abort()

    async def _pump(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        assert self._flowing is not None
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.ensure_future(self._send(link, queue, writer))
        try:
            while True:
                await self._flowing.wait()
                try:
                    data = await reader.read(_CHUNK)
                except OSError:
                    link.abort()
                    return
                if not data:
                    await queue.join()  # deliver what is in flight, then half-close
                    with contextlib.suppress(OSError):
                        if writer.can_write_eof():
                            writer.write_eof()
                    return
                queue.put_nowait((time.monotonic() + self._delay, data))
        finally:
            sender.cancel()

    async def _send(
        self, link: _Link, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        assert self._flowing is not None
        while True:
            due, data = await queue.get()
            try:
                await self._flowing.wait()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
            except OSError:
                link.abort()
                return
            finally:
                queue.task_done()
