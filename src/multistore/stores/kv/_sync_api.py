"""The key-value interface for sync code: the operations and semantics of
:class:`multistore.stores.kv.KeyValueStore`, as plain methods.

Each backend runs the same SQL or Redis commands, with the same checks, on both
APIs (they share those modules); the conformance suite runs against both.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

from multistore.stores._sync_base import SyncStore
from multistore.stores.kv._api import RateLimit
from multistore.stores.kv._checks import dump_json, load_json

__all__ = ["SyncKeyValueStore"]


class SyncKeyValueStore(SyncStore, abc.ABC):
    """A key-value store for sync code; see :class:`multistore.stores.kv.KeyValueStore`
    for what each operation does."""

    model: ClassVar[str] = "kv"

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None:
        """The value at ``key``, or ``None`` when it is missing or expired."""

    @abc.abstractmethod
    def set(self, key: str, value: bytes | str, *, ttl: float | None = None) -> None:
        """Store ``value`` at ``key``, replacing any value and TTL."""

    @abc.abstractmethod
    def set_if_absent(self, key: str, value: bytes | str, *, ttl: float | None = None) -> bool:
        """Store ``value`` only when ``key`` does not exist; True when it was stored."""

    @abc.abstractmethod
    def compare_and_set(
        self,
        key: str,
        expected: bytes | str | None,
        value: bytes | str,
        *,
        ttl: float | None = None,
    ) -> bool:
        """Store ``value`` only when the key's value is exactly ``expected`` (``None``:
        only when missing); True when stored."""

    @abc.abstractmethod
    def delete(self, *keys: str) -> int:
        """Remove keys of any kind; the number that existed."""

    @abc.abstractmethod
    def expire(self, key: str, ttl: float) -> bool:
        """Set a TTL on an existing key; False when it is missing."""

    @abc.abstractmethod
    def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires (``None``: missing, ``math.inf``: no expiry)."""

    @abc.abstractmethod
    def incr(self, key: str, amount: int = 1) -> int:
        """Atomically add ``amount`` to the integer at ``key``; the new value."""

    @abc.abstractmethod
    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of several keys, ``None`` where missing (or not a string)."""

    @abc.abstractmethod
    def scan(self, prefix: str = "") -> list[str]:
        """All live keys that start with ``prefix`` (taken literally), sorted."""

    @abc.abstractmethod
    def zadd(self, key: str, mapping: dict[str, float]) -> int:
        """Add members with scores; the number of members that were new."""

    @abc.abstractmethod
    def zscore(self, key: str, member: str) -> float | None:
        """The score of ``member``, or ``None``."""

    @abc.abstractmethod
    def zincrby(self, key: str, member: str, amount: float) -> float:
        """Add ``amount`` to the score of ``member``; the new score."""

    @abc.abstractmethod
    def zrange(
        self, key: str, start: int, stop: int, *, desc: bool = False
    ) -> list[tuple[str, float]]:
        """Members with scores by rank, ``start`` to ``stop`` inclusive."""

    @abc.abstractmethod
    def zrank(self, key: str, member: str, *, desc: bool = False) -> int | None:
        """The 0-based rank of ``member``, or None."""

    @abc.abstractmethod
    def zrem(self, key: str, *members: str) -> int:
        """Remove members; the number that were present."""

    @abc.abstractmethod
    def rate_limit(self, key: str, limit: int, window: float) -> RateLimit:
        """Sliding-window log limiter: at most ``limit`` requests in any ``window``
        seconds; atomic, a refused request is not counted."""

    def purge_expired(self, prefix: str = "") -> int:
        """Remove expired keys that start with ``prefix`` now; the number removed."""
        return 0

    def set_json(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        """Store ``value`` as JSON (see the async :meth:`~KeyValueStore.set_json`)."""
        self.set(key, dump_json(value, key), ttl=ttl)

    def get_json(self, key: str) -> Any:
        """The JSON value at ``key`` decoded, or ``None`` when missing."""
        return load_json(self.get(key), key)
