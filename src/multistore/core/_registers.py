"""Registers: last-writer-wins on hybrid logical clocks, and multi-value.

``LWWRegister`` keeps the value with the greatest HLC timestamp; concurrent
writes lose silently (that is the point, and the danger). ``MVRegister`` keeps
every value written concurrently: a write replaces exactly the values its
replica had seen (a dot per write, a version-vector context for what was seen),
and a reader sees all concurrent values and decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, Self, TypeVar

from multistore.core._causal import CausalContext, decode_dots, decode_nodes, encode_dots
from multistore.core._crdt import CRDT, json_key
from multistore.core._dotstore import DotKernel
from multistore.core._hlc import HLCTimestamp
from multistore.errors import InvalidValueError

__all__ = ["LWWRegister", "MVRegister"]

T = TypeVar("T")

_KEY = 0  # the MV-Register's dot kernel has a single key


class LWWRegister(CRDT, Generic[T]):
    """A register where the write with the greatest HLC timestamp wins.

    Timestamps from one :class:`~multistore.core.HybridClock` per node are unique
    (they end in the node id). Should two writes ever carry the same timestamp,
    the greater JSON text of the value wins, so merge stays deterministic.
    """

    type_name = "lwwregister"
    __slots__ = ("_timestamp", "_value")

    def __init__(self, node: str) -> None:
        super().__init__(node)
        self._value: T | None = None
        self._timestamp: HLCTimestamp | None = None

    @property
    def value(self) -> T | None:
        """The winning value, or ``None`` if nothing was ever written."""
        return self._value

    @property
    def timestamp(self) -> HLCTimestamp | None:
        return self._timestamp

    def assign(self, value: T, timestamp: HLCTimestamp) -> Self:
        """Write ``value`` stamped ``timestamp`` (from this node's clock); returns the delta."""
        if not isinstance(timestamp, HLCTimestamp):
            raise InvalidValueError(f"expected an HLCTimestamp, got {type(timestamp).__name__}")
        json_key(value)
        delta = self._empty()
        delta._value, delta._timestamp = value, timestamp
        self._join(delta)
        return delta

    def copy(self) -> Self:
        clone = self._blank()
        clone._value, clone._timestamp = self._value, self._timestamp
        return clone

    def _empty(self) -> Self:
        return type(self)(self._node)

    def _key(self) -> tuple[HLCTimestamp, str]:
        assert self._timestamp is not None
        return self._timestamp, json_key(self._value)

    def _join(self, other: Self) -> None:
        if other._timestamp is None:
            return
        if self._timestamp is None or other._key() > self._key():
            self._value, self._timestamp = other._value, other._timestamp

    def _same_state(self, other: Self) -> bool:
        return self._timestamp == other._timestamp and (
            self._timestamp is None or json_key(self._value) == json_key(other._value)
        )

    def _encode(self) -> dict[str, Any]:
        if self._timestamp is None:
            return {}
        return {"ts": str(self._timestamp), "value": self._value}

    @classmethod
    def _decode(cls, data: Mapping[str, Any], node: str) -> Self:
        state = cls(node)
        if "ts" in data:
            state._timestamp = HLCTimestamp.parse(data["ts"])
            state._value = data.get("value")
        return state


class MVRegister(CRDT, Generic[T]):
    """A multi-value register: concurrent writes are all kept until a later write covers them."""

    type_name = "mvregister"
    __slots__ = ("_kernel",)

    def __init__(self, node: str) -> None:
        super().__init__(node)
        self._kernel: DotKernel[int, T] = DotKernel()

    @property
    def value(self) -> tuple[T, ...]:
        """All current (mutually concurrent) values, in a deterministic order."""
        dots = self._kernel.dots(_KEY)
        return tuple(dots[dot] for dot in sorted(dots))

    @property
    def context(self) -> CausalContext:
        """Everything this replica has seen, as a causal context (a copy)."""
        return self._kernel.context.copy()

    def assign(self, value: T) -> Self:
        """Write ``value``, replacing every value seen here; returns the delta."""
        json_key(value)
        kernel = self._kernel
        seen = list(kernel.dots(_KEY))
        delta = self._empty()
        delta._kernel.add(_KEY, kernel.context.next_dot(self._node), value)
        delta._kernel.see(seen)
        self._join(delta)
        return delta

    def copy(self) -> Self:
        clone = self._blank()
        clone._kernel = self._kernel.copy()
        return clone

    def _empty(self) -> Self:
        return type(self)(self._node)

    def _join(self, other: Self) -> None:
        self._kernel.join(other._kernel)

    def _same_state(self, other: Self) -> bool:
        mine, theirs = self._kernel, other._kernel
        if mine.context != theirs.context or set(mine.owner) != set(theirs.owner):
            return False
        a, b = mine.dots(_KEY), theirs.dots(_KEY)
        return all(json_key(a[dot]) == json_key(b[dot]) for dot in a)

    def _encode(self) -> dict[str, Any]:
        index: dict[str, int] = {}
        context = self._kernel.context.encode(index)
        dots = self._kernel.dots(_KEY)
        values = [[dots[dot], *encode_dots([dot], index)] for dot in sorted(dots)]
        return {"nodes": list(index), "context": context, "values": values}

    @classmethod
    def _decode(cls, data: Mapping[str, Any], node: str) -> Self:
        nodes = decode_nodes(data.get("nodes", []))
        state = cls(node)
        kernel = state._kernel
        kernel.context = CausalContext.decode(data.get("context", {}), nodes)
        values = data.get("values", [])
        if not isinstance(values, list):
            raise InvalidValueError(f"mvregister values must be a list, got {values!r}")
        for entry in values:
            if not isinstance(entry, list) or len(entry) != 3:
                raise InvalidValueError(
                    f"an mvregister value is [value, node, counter], got {entry!r}"
                )
            (dot,) = decode_dots(entry[1:], nodes)
            if not kernel.context.contains(dot):
                raise InvalidValueError(f"mvregister dot {dot} is not in the state's context")
            kernel.entries.setdefault(_KEY, {})[dot] = entry[0]
            kernel.owner[dot] = _KEY
        return state
