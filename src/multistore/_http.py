"""A small asyncio HTTP/1.1 client for JSON APIs on trusted infrastructure (Patroni's
REST API, etcd's JSON gateway): one request per connection, a deadline for the whole
exchange, no redirects, no TLS. It keeps the package free of an HTTP dependency for
two control-plane APIs that answer a few hundred bytes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

__all__ = ["HttpError", "http_json"]


class HttpError(Exception):
    """No usable answer: connection refused or lost, timeout, or not HTTP/JSON.
    ``sent`` is True when the request may have reached the server."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


async def http_json(
    method: str,
    address: str,
    path: str,
    body: Any = None,
    *,
    deadline: float = 2.0,
) -> tuple[int, Any]:
    """``method`` ``path`` on ``address`` (``host:port``), ``body`` sent as JSON;
    (status, the decoded JSON body, its text when it is not JSON, or None when
    empty), all within ``deadline`` seconds. Raises :class:`HttpError`."""
    host, _, port = address.rpartition(":")
    payload = b"" if body is None else json.dumps(body).encode()
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    sent = False
    try:
        async with asyncio.timeout(deadline):
            reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
            try:
                writer.write(request)
                sent = True
                await writer.drain()
                raw = await reader.read()
            finally:
                writer.close()
    except (OSError, TimeoutError, ValueError) as exc:
        what = "no answer in time" if isinstance(exc, TimeoutError) else str(exc)
        raise HttpError(f"{method} http://{address}{path}: {what}", sent=sent) from exc
    head, _, content = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise HttpError(f"{method} http://{address}{path}: not an HTTP reply", sent=True)
    if b"transfer-encoding: chunked" in head.lower():
        content = _unchunk(content)
    try:
        return int(status_line[1]), json.loads(content) if content.strip() else None
    except ValueError:  # a plain-text answer (an error's reason): handed over as text
        return int(status_line[1]), content.decode(errors="replace").strip()


def _unchunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)
