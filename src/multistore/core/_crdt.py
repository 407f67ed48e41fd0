"""The base of every state-based CRDT here, and the registry used to decode them.

Each CRDT object is one replica's state, bound to that replica's node id (the id
its mutators stamp their events with). The contract:

* ``merge(other)`` returns a new state, the join of both; it is commutative,
  associative and idempotent, so replicas that have received the same states,
  in any order and any number of times, hold equal states.
* ``apply(other)`` joins ``other`` into this state in place.
* Every mutator changes the state in place and returns a **delta**: a small
  state of the same class holding just that change. A delta merges like a full
  state, so shipping deltas instead of states is an optimisation only; deltas
  may be lost, duplicated or reordered as long as each is delivered eventually
  (or a full state later replaces them).
* ``to_dict()`` / ``from_dict()`` give a compact JSON-safe form. ``==`` compares
  states (the node binding is not part of the state).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from multistore.core._hlc import _check_node
from multistore.errors import InvalidValueError

__all__ = ["CRDT", "crdt_from_dict"]

_TYPES: dict[str, type[CRDT]] = {}


class CRDT(ABC):
    """A replica's state of one state-based CRDT (see the module docstring for the contract)."""

    type_name: ClassVar[str]
    """The name written as ``"type"`` by :meth:`to_dict`."""

    __slots__ = ("_node",)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("type_name")
        if isinstance(name, str):
            _TYPES[name] = cls

    def __init__(self, node: str) -> None:
        self._node = _check_node(node)

    @property
    def node(self) -> str:
        """The replica id this state's mutators stamp their events with."""
        return self._node

    @property
    @abstractmethod
    def value(self) -> Any:
        """The plain value the state stands for."""

    @abstractmethod
    def copy(self) -> Self:
        """An independent copy bound to the same node."""

    def _blank(self) -> Self:
        """An instance of this class bound to this node, with no state set (for fast copies)."""
        clone = object.__new__(type(self))
        clone._node = self._node
        return clone

    @abstractmethod
    def _empty(self) -> Self:
        """An empty state of the same kind bound to the same node (used for deltas)."""

    @abstractmethod
    def _join(self, other: Self) -> None:
        """Join ``other`` into this state in place."""

    @abstractmethod
    def _same_state(self, other: Self) -> bool: ...

    @abstractmethod
    def _encode(self) -> dict[str, Any]: ...

    @classmethod
    @abstractmethod
    def _decode(cls, data: Mapping[str, Any], node: str) -> Self: ...

    def _compatible(self, other: object) -> bool:
        return type(other) is type(self)

    def _peer(self, other: object) -> Self:
        if not self._compatible(other):
            raise InvalidValueError(
                f"cannot merge {type(other).__name__} into {type(self).__name__}"
                + (f" of {self._describe()}" if self._describe() else "")
            )
        return other  # type: ignore[return-value]

    def _describe(self) -> str:
        return ""

    def apply(self, other: Self) -> None:
        """Join ``other`` (a full state or a delta) into this state, in place."""
        self._join(self._peer(other))

    def merge(self, other: Self) -> Self:
        """A new state: the join of this one and ``other``; neither input changes."""
        merged = self.copy()
        merged._join(self._peer(other))
        return merged

    def rebind(self, node: str) -> Self:
        """A copy of this state bound to another replica id (e.g. a state loaded elsewhere)."""
        clone = self.copy()
        clone._node = _check_node(node)
        return clone

    def to_dict(self) -> dict[str, Any]:
        """A compact JSON-safe form of the state (the node binding is not included)."""
        return {"type": self.type_name, **self._encode()}

    def to_json(self) -> str:
        """:meth:`to_dict` as compact JSON text."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: object, *, node: str) -> Self:
        """Read a state written by :meth:`to_dict`, bound to replica ``node``."""
        if not isinstance(data, Mapping) or data.get("type") != cls.type_name:
            got = data.get("type") if isinstance(data, Mapping) else type(data).__name__
            raise InvalidValueError(f"expected a {cls.type_name!r} state, got {got!r}")
        return cls._decode(data, _check_node(node))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CRDT):
            return NotImplemented
        return self._compatible(other) and self._same_state(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(node={self._node!r}, value={self.value!r})"


def crdt_from_dict(data: object, *, node: str) -> CRDT:
    """Decode any CRDT state written by ``to_dict``, picking the class from its ``"type"``."""
    return crdt_type(data.get("type") if isinstance(data, Mapping) else None).from_dict(
        data, node=node
    )


def crdt_type(name: object) -> type[CRDT]:
    """The CRDT class registered under ``name`` (its ``type_name``)."""
    cls = _TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        known = ", ".join(sorted(_TYPES))
        raise InvalidValueError(f"unknown CRDT type {name!r}; known types: {known}")
    return cls


def json_key(value: object) -> str:
    """A deterministic text form of a JSON-safe value (for tie-breaks and checks)."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidValueError(f"value {value!r} is not JSON-safe: {exc}") from None
