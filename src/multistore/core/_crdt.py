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
* ``to_bytes()`` / ``from_bytes()`` give the wire form (see ``_wire``): a version
  byte, a tag, then a binary body for the classes that have one (the cart) or
  the compact JSON otherwise. ``from_bytes`` also reads the older wire form, the
  bare JSON text of ``to_json()``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from multistore.core._hlc import _check_node
from multistore.core._wire import JSON_TAG, LEGACY_JSON_START, WIRE_VERSION, Reader, Writer
from multistore.errors import InvalidValueError

__all__ = ["CRDT", "crdt_from_bytes", "crdt_from_dict"]

_TYPES: dict[str, type[CRDT]] = {}
_WIRE_TAGS: dict[int, type[CRDT]] = {}


class CRDT(ABC):
    """A replica's state of one state-based CRDT (see the module docstring for the contract)."""

    type_name: ClassVar[str]
    """The name written as ``"type"`` by :meth:`to_dict`."""

    _wire_tag: ClassVar[int | None] = None
    """The tag byte of this class's binary wire body (None: the wire form is JSON)."""

    __slots__ = ("_node",)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("type_name")
        if isinstance(name, str):
            _TYPES[name] = cls
        tag = cls.__dict__.get("_wire_tag")
        if isinstance(tag, int):
            _WIRE_TAGS[tag] = cls

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

    def to_bytes(self) -> bytes:
        """The wire form: version byte, tag, then a binary body or compact JSON."""
        if self._wire_tag is not None:
            body = self._encode_wire(Writer(self._wire_tag))
            if body is not None:
                return body
        return bytes((WIRE_VERSION, JSON_TAG)) + self.to_json().encode()

    def _encode_wire(self, out: Writer) -> bytes | None:
        """The binary wire form, or None when this state needs the JSON body."""
        return None

    @classmethod
    def _decode_wire(cls, body: Reader, node: str) -> Self:
        raise NotImplementedError

    @classmethod
    def from_bytes(cls, data: object, *, node: str) -> Self:
        """Read a state written by :meth:`to_bytes` (or the older JSON form), bound to ``node``.

        Input that is not such a state — truncated, of another type, with an unknown
        version or tag, or with lengths that run past its end — raises
        :class:`~multistore.errors.InvalidValueError`.
        """
        view = _view(data)
        node = _check_node(node)
        if view[0] == LEGACY_JSON_START:
            return cls.from_dict(_json(view), node=node)
        tag = _wire_header(view)
        if tag == JSON_TAG:
            return cls.from_dict(_json(view[2:]), node=node)
        if tag != cls._wire_tag or cls._wire_tag is None:
            found = _WIRE_TAGS.get(tag)
            raise InvalidValueError(
                f"expected a {cls.type_name!r} wire state, got "
                + (f"a {found.type_name!r} one" if found else f"unknown tag {tag}")
            )
        return cls._decode_wire(Reader(view[2:], cls.type_name), node)

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


def crdt_from_bytes(data: object, *, node: str) -> CRDT:
    """Decode any CRDT state written by ``to_bytes`` (or the older JSON form)."""
    view = _view(data)
    if view[0] != LEGACY_JSON_START:
        tag = _wire_header(view)
        if tag != JSON_TAG:
            cls = _WIRE_TAGS.get(tag)
            if cls is None:
                raise InvalidValueError(f"unknown CRDT wire tag {tag}")
            return cls.from_bytes(view, node=node)
        view = view[2:]
    return crdt_from_dict(_json(view), node=node)


def _view(data: object) -> memoryview:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidValueError(f"a CRDT wire state is bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    if not view:
        raise InvalidValueError("a CRDT wire state cannot be empty")
    return view


def _wire_header(view: memoryview) -> int:
    if view[0] != WIRE_VERSION:
        raise InvalidValueError(
            f"unknown CRDT wire version {view[0]} (this code reads {WIRE_VERSION} and JSON)"
        )
    if len(view) < 2:
        raise InvalidValueError("truncated CRDT wire state: no tag after the version byte")
    return view[1]


def _json(view: memoryview) -> object:
    try:
        return json.loads(str(view, "utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidValueError(f"a CRDT wire state's JSON does not parse: {exc}") from None


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
