"""A lean asyncio etcd v3 client over etcd's JSON gateway (``/v3/kv/…``, ``/v3/lease/…``).

etcd serves its gRPC API as JSON over HTTP too (keys and values base64-encoded); that
is all this client speaks, so multistore needs no gRPC stack for the few calls it
makes: put, range (linearizable by default), delete, a compare-and-put transaction,
and leases. The endpoints of an ``etcd://h1:2379,h2:2379`` URL are tried in order: a
member that refuses the connection is skipped; one that took the request and did not
answer makes the call fail as *sent* (it may have been applied), and the caller
decides.

Chosen over the async clients on PyPI (``aetcd`` is maintained and async, but brings
grpcio): Debian's etcd 3.4 serves the gateway at ``/v3/``, and these calls are a few
hundred bytes each.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from multistore._http import HttpError, http_json
from multistore.errors import Outcome, StoreUnavailableError

__all__ = ["EtcdClient", "EtcdError", "EtcdValue", "store_call"]

T = TypeVar("T")


def _b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text or "")


def _range_end(prefix: bytes) -> bytes:
    """The key right after every key that starts with ``prefix``."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\x00"


class EtcdError(Exception):
    """An etcd call failed. ``sent``: the request may have been applied."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


async def store_call(what: str, call: Awaitable[T]) -> T:
    """Await an etcd call; its failure as a :class:`StoreUnavailableError` naming
    ``what``, indeterminate when the request may have been applied."""
    try:
        return await call
    except EtcdError as exc:
        outcome = Outcome.INDETERMINATE if exc.sent else Outcome.DEFINITE
        raise StoreUnavailableError(f"{what}: {exc}", outcome=outcome) from exc


@dataclass(frozen=True)
class EtcdValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


class EtcdClient:
    """etcd v3 through the JSON gateway of any of ``endpoints`` (``host:port``)."""

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 5.0) -> None:
        if not endpoints:
            raise ValueError("an etcd client needs at least one endpoint")
        self.endpoints = list(endpoints)
        self.timeout = timeout

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        errors: list[str] = []
        for i, address in enumerate(list(self.endpoints)):
            try:
                status, reply = await http_json(
                    "POST", address, f"/v3/{path}", body, deadline=self.timeout
                )
            except HttpError as exc:
                if exc.sent:
                    raise EtcdError(f"etcd {path} on {address}: {exc}", sent=True) from exc
                errors.append(str(exc))
                continue
            if status != 200 or not isinstance(reply, dict):
                message = reply.get("error") if isinstance(reply, dict) else reply
                # Not the leader's quorum (a partitioned member): try the next one.
                if status in (503, 500) and i + 1 < len(self.endpoints):
                    errors.append(f"{address}: {status} {message}")
                    continue
                raise EtcdError(f"etcd {path} on {address}: {status} {message}", sent=True)
            if i:  # remember the member that answered
                self.endpoints.remove(address)
                self.endpoints.insert(0, address)
            return reply
        raise EtcdError(f"no etcd member answered {path}: {'; '.join(errors)}", sent=False)

    @staticmethod
    def _kvs(reply: dict[str, Any]) -> list[EtcdValue]:
        return [
            EtcdValue(
                key=_unb64(kv.get("key")),
                value=_unb64(kv.get("value")),
                create_revision=int(kv.get("create_revision", 0)),
                mod_revision=int(kv.get("mod_revision", 0)),
                lease=int(kv.get("lease", 0)),
            )
            for kv in reply.get("kvs", [])
        ]

    async def get(self, key: bytes | str) -> EtcdValue | None:
        """The key's value (a linearizable read), or None."""
        found = self._kvs(await self._call("kv/range", {"key": _b64(key)}))
        return found[0] if found else None

    async def get_prefix(self, prefix: bytes | str) -> list[EtcdValue]:
        raw = prefix.encode() if isinstance(prefix, str) else prefix
        body = {"key": _b64(raw), "range_end": _b64(_range_end(raw))}
        return self._kvs(await self._call("kv/range", body))

    async def put(self, key: bytes | str, value: bytes | str, *, lease: int = 0) -> None:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        await self._call("kv/put", body)

    async def delete(self, key: bytes | str) -> int:
        reply = await self._call("kv/deleterange", {"key": _b64(key)})
        return int(reply.get("deleted", 0))

    async def create(
        self, key: bytes | str, value: bytes | str, *, lease: int = 0
    ) -> tuple[bool, EtcdValue | None]:
        """Put ``value`` only if ``key`` does not exist (one transaction): (True, None)
        when created, else (False, the value that stands)."""
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        body = {
            "compare": [
                {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
            ],
            "success": [{"request_put": put}],
            "failure": [{"request_range": {"key": _b64(key)}}],
        }
        reply = await self._call("kv/txn", body)
        if reply.get("succeeded"):
            return True, None
        responses = reply.get("responses", [])
        found = self._kvs(responses[0].get("response_range", {})) if responses else []
        return False, found[0] if found else None

    async def grant(self, ttl: int) -> int:
        """A lease of ``ttl`` seconds; its id."""
        reply = await self._call("lease/grant", {"TTL": str(ttl)})
        return int(reply["ID"])

    async def keep_alive(self, lease: int) -> int:
        """Renew ``lease``; the seconds it has left (0 or less: it expired)."""
        reply = await self._call("lease/keepalive", {"ID": str(lease)})
        result = reply.get("result", reply)
        return int(result.get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        await self._call("lease/revoke", {"ID": str(lease)})

    async def time_to_live(self, lease: int) -> int:
        """The seconds ``lease`` has left (-1 or 0: expired or revoked)."""
        reply = await self._call("lease/timetolive", {"ID": str(lease)})
        return int(reply.get("TTL", -1))
