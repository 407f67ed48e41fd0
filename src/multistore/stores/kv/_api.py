"""The key-value interface: strings with TTL, counters, sorted sets, a rate limiter.

The operations follow Redis closely, because Redis is what most users know and
what the server backend speaks; the embedded SQLite backend implements the same
semantics, and one conformance suite holds both to them:

- Values are bytes (a ``str`` is stored as its UTF-8 encoding); keys are non-empty
  strings. ``set`` replaces the value and any TTL, whatever kind of value the key
  held before.
- A key holds either a *string* or a *sorted set*. A string operation on a sorted
  set (or the reverse) raises :class:`WrongTypeError` and changes nothing;
  ``delete``, ``expire``, ``ttl`` and ``scan`` work on both kinds, and ``mget``
  reads a sorted set as missing, as Redis ``MGET`` does.
- ``ttl(key)`` is ``None`` for a missing key and ``math.inf`` for a key without
  expiry; otherwise the seconds left. TTLs are seconds (floats) with millisecond
  resolution; an expired key is gone for every operation.
- A sorted set whose last member is removed disappears, as in Redis.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from multistore.errors import WrongTypeError
from multistore.stores._base import Store
from multistore.stores.kv._checks import dump_json, load_json

__all__ = ["KeyValueStore", "RateLimit", "WrongTypeError"]


@dataclass(frozen=True)
class RateLimit:
    """The answer of :meth:`KeyValueStore.rate_limit`."""

    allowed: bool
    """True when this request is within the limit (and was counted)."""
    remaining: int
    """How many more requests the window allows now."""
    retry_after: float
    """Seconds until a refused request would be allowed; 0.0 when allowed."""


class KeyValueStore(Store, abc.ABC):
    """A key-value store: Redis-like strings, counters, sorted sets and rate limits."""

    model: ClassVar[str] = "kv"

    # -- strings ---------------------------------------------------------------

    @abc.abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The value at ``key``, or ``None`` when it is missing or expired."""

    @abc.abstractmethod
    async def set(self, key: str, value: bytes | str, *, ttl: float | None = None) -> None:
        """Store ``value`` at ``key``, replacing any value and TTL; expire after ``ttl``
        seconds when given."""

    @abc.abstractmethod
    async def set_if_absent(
        self, key: str, value: bytes | str, *, ttl: float | None = None
    ) -> bool:
        """Store ``value`` only when ``key`` does not exist; True when it was stored."""

    @abc.abstractmethod
    async def compare_and_set(
        self,
        key: str,
        expected: bytes | str | None,
        value: bytes | str,
        *,
        ttl: float | None = None,
    ) -> bool:
        """Atomically store ``value`` at ``key`` (replacing its TTL, as :meth:`set`
        does) only when the key's value is exactly ``expected`` (``None``: only when
        the key is missing); True when stored. A sorted set at ``key`` raises
        :class:`WrongTypeError` and changes nothing."""

    @abc.abstractmethod
    async def delete(self, *keys: str) -> int:
        """Remove keys of any kind; the number that existed."""

    @abc.abstractmethod
    async def expire(self, key: str, ttl: float) -> bool:
        """Set a TTL of ``ttl`` seconds on an existing key; False when it is missing."""

    @abc.abstractmethod
    async def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires: ``None`` when the key is missing,
        ``math.inf`` when it has no expiry."""

    @abc.abstractmethod
    async def incr(self, key: str, amount: int = 1) -> int:
        """Atomically add ``amount`` to the integer at ``key`` (a missing key counts as
        0) and return the new value. The TTL is kept. A value that is not a decimal
        64-bit integer raises :class:`InvalidValueError` and is left unchanged."""

    @abc.abstractmethod
    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of several keys, ``None`` where missing (or not a string)."""

    @abc.abstractmethod
    async def scan(self, prefix: str = "") -> list[str]:
        """All live keys that start with ``prefix`` (taken literally), sorted."""

    # -- sorted sets -----------------------------------------------------------

    @abc.abstractmethod
    async def zadd(self, key: str, mapping: dict[str, float]) -> int:
        """Add members with scores (updating the score of existing ones); the number
        of members that were new. An empty mapping does nothing and returns 0."""

    @abc.abstractmethod
    async def zscore(self, key: str, member: str) -> float | None:
        """The score of ``member``, or ``None``."""

    @abc.abstractmethod
    async def zincrby(self, key: str, member: str, amount: float) -> float:
        """Add ``amount`` to the score of ``member`` (0 when absent); the new score."""

    @abc.abstractmethod
    async def zrange(
        self, key: str, start: int, stop: int, *, desc: bool = False
    ) -> list[tuple[str, float]]:
        """Members with scores by rank, ``start`` to ``stop`` inclusive; negative
        indexes count from the end (``-1`` is the last). Ties in score are ordered
        by member (byte order), reversed when ``desc``."""

    @abc.abstractmethod
    async def zrank(self, key: str, member: str, *, desc: bool = False) -> int | None:
        """The 0-based rank of ``member`` (highest score first when ``desc``), or None."""

    @abc.abstractmethod
    async def zrem(self, key: str, *members: str) -> int:
        """Remove members; the number that were present. No members: returns 0."""

    # -- rate limiting ---------------------------------------------------------

    @abc.abstractmethod
    async def rate_limit(self, key: str, limit: int, window: float) -> RateLimit:
        """Sliding-window log limiter: allow at most ``limit`` requests in any
        ``window`` seconds. Atomic; a refused request is not counted. The key holds
        a sorted set of request times (epoch seconds) and expires after ``window``."""

    # -- maintenance -----------------------------------------------------------

    async def purge_expired(self, prefix: str = "") -> int:
        """Remove expired keys that start with ``prefix`` now; the number removed.
        Backends that expire keys themselves (Redis) return 0."""
        return 0

    # -- JSON convenience ------------------------------------------------------

    async def set_json(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        """Store ``value`` as JSON. NaN, Infinity, values JSON cannot hold and lists or
        dicts nested more than 100 deep raise :class:`InvalidValueError`."""
        await self.set(key, dump_json(value, key), ttl=ttl)

    async def get_json(self, key: str) -> Any:
        """The JSON value at ``key`` decoded, or ``None`` when missing. A value that is
        not JSON (or nests too deeply for Python's decoder) raises
        :class:`InvalidValueError`."""
        return load_json(await self.get(key), key)
