"""The add-wins observed-remove set (OR-Set), in its compact causal form.

Each ``add`` tags the element with a fresh dot; ``remove`` drops the dots it has
observed. An add concurrent with a remove carries a dot the remover never saw,
so it survives: **add wins**. Removing and adding again works any number of
times, because the new add has a new dot.

There are no tombstones: a removed element leaves nothing behind but its dots
in the causal context, which is a version vector (one counter per node) plus the
few dots received out of order. The state is therefore O(live elements + nodes).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from typing import Any, Generic, Self, TypeVar

from multistore.core._causal import (
    CausalContext,
    decode_dots,
    decode_nodes,
    encode_dots,
)
from multistore.core._crdt import CRDT, json_key
from multistore.core._dotstore import DotKernel
from multistore.errors import InvalidValueError

__all__ = ["ORSet"]

E = TypeVar("E", bound=Hashable)


class ORSet(CRDT, Generic[E]):
    """An add-wins observed-remove set of hashable, JSON-safe elements."""

    type_name = "orset"
    __slots__ = ("_kernel",)

    def __init__(self, node: str) -> None:
        super().__init__(node)
        self._kernel: DotKernel[E, None] = DotKernel()

    @property
    def value(self) -> frozenset[E]:
        return frozenset(self._kernel.entries)

    def __contains__(self, element: object) -> bool:
        return element in self._kernel.entries

    def __iter__(self) -> Iterator[E]:
        return iter(self._kernel.entries)

    def __len__(self) -> int:
        return len(self._kernel.entries)

    @property
    def context(self) -> CausalContext:
        """The dots this replica has seen (a copy)."""
        return self._kernel.context.copy()

    def add(self, element: E) -> Self:
        """Add ``element``; returns the delta. Its tags seen here are replaced by one new tag."""
        json_key(element)
        kernel = self._kernel
        old = list(kernel.dots(element))
        dot = kernel.context.next_dot(self._node)
        delta = self._empty()
        delta._kernel.add(element, dot, None)
        delta._kernel.see(old)
        self._join(delta)
        return delta

    def remove(self, element: E) -> Self:
        """Remove ``element`` as observed here; returns the delta (empty if absent).

        A concurrent add elsewhere, which this replica has not seen, survives.
        """
        delta = self._empty()
        delta._kernel.see(list(self._kernel.dots(element)))
        self._join(delta)
        return delta

    def clear(self) -> Self:
        """Remove every element observed here; returns the delta."""
        delta = self._empty()
        delta._kernel.see(list(self._kernel.owner))
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
        return self._kernel.same(other._kernel)

    def _encode(self) -> dict[str, Any]:
        index: dict[str, int] = {}
        context = self._kernel.context.encode(index)
        entries = [
            [element, *encode_dots(dots, index)]
            for element, dots in sorted(self._kernel.entries.items(), key=lambda i: json_key(i[0]))
        ]
        return {"nodes": list(index), "context": context, "entries": entries}

    @classmethod
    def _decode(cls, data: Mapping[str, Any], node: str) -> Self:
        nodes = decode_nodes(data.get("nodes", []))
        state = cls(node)
        kernel = state._kernel
        kernel.context = CausalContext.decode(data.get("context", {}), nodes)
        entries = data.get("entries", [])
        if not isinstance(entries, list):
            raise InvalidValueError(f"orset entries must be a list, got {entries!r}")
        for entry in entries:
            if not isinstance(entry, list) or len(entry) < 3:
                raise InvalidValueError(f"an orset entry is [element, dots...], got {entry!r}")
            element = entry[0]
            if isinstance(element, list | dict):
                raise InvalidValueError(f"orset elements must be hashable, got {element!r}")
            for dot in decode_dots(entry[1:], nodes):
                if not kernel.context.contains(dot):
                    raise InvalidValueError(f"orset dot {dot} is not in the state's context")
                kernel.entries.setdefault(element, {})[dot] = None
                kernel.owner[dot] = element
        return state
