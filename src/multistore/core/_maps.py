"""The observed-remove map of CRDTs (OR-Map), and the shopping cart built on it.

Keys come and go like the elements of an add-wins OR-Set; each key's value is a
CRDT of one declared type. Every replica that updates a key keeps its own
*contribution* to it — a CRDT state tagged with a dot (replaced by a new dot at
each update) — and the key's value is the merge of all live contributions.

``remove(key)`` drops the contributions this replica has observed.
**Remove vs concurrent update: the update survives** (observed-remove, like the
OR-Set's add-wins): the key stays, with the value of the contributions the
remover had not seen. A replica's contribution restarts from empty once it has
observed a remove of that key, so what survives a concurrent remove is what the
updating replica contributed since the last remove *it* had observed — for a
cart: remove "apple" on one replica while another adds one apple, and the merged
cart holds that one apple, not the old quantity plus one (unless the adding
replica itself had added the old apples since the last remove it saw).

Each contribution is bound to its own id, ``"<node>:<first dot>"``, so two
contributions of one node (one made before a remove, one after) never merge
into each other: counters add up instead of taking the maximum.

A stored contribution is never changed in place — ``update`` stores a changed
copy under a new dot — so states, copies and deltas share them safely.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Any, Generic, Self, TypeVar

from multistore.core._cart_wire import decode_cart, encode_cart
from multistore.core._causal import CausalContext, decode_dots, decode_nodes, encode_dots
from multistore.core._counters import PNCounter
from multistore.core._crdt import CRDT, crdt_type, json_key
from multistore.core._dotstore import DotKernel
from multistore.core._vv import Dot
from multistore.core._wire import Reader, Writer
from multistore.errors import InvalidValueError

__all__ = ["Cart", "ORMap"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V", bound=CRDT)


class ORMap(CRDT, Generic[K, V]):
    """A map from hashable, JSON-safe keys to CRDTs of one type (``value_type``)."""

    type_name = "ormap"
    __slots__ = ("_kernel", "_value_type")

    def __init__(self, node: str, value_type: type[V]) -> None:
        super().__init__(node)
        if not (isinstance(value_type, type) and issubclass(value_type, CRDT)):
            raise InvalidValueError(f"an ORMap's values must be a CRDT class, got {value_type!r}")
        self._value_type = value_type
        self._kernel: DotKernel[K, V] = DotKernel()

    @property
    def value_type(self) -> type[V]:
        return self._value_type

    def get(self, key: K) -> V | None:
        """The merged value of ``key`` (a fresh copy: change it through :meth:`update`)."""
        dots = self._kernel.dots(key)
        if not dots:
            return None
        ordered = sorted(dots)
        merged = dots[ordered[0]].rebind(self._node)
        for dot in ordered[1:]:
            merged.apply(dots[dot])
        return merged

    @property
    def value(self) -> dict[K, Any]:
        """Each key's merged plain value."""
        result: dict[K, Any] = {}
        for key in self._kernel.entries:
            merged = self.get(key)
            assert merged is not None
            result[key] = merged.value
        return result

    def keys(self) -> Iterator[K]:
        return iter(list(self._kernel.entries))

    def __contains__(self, key: object) -> bool:
        return key in self._kernel.entries

    def __len__(self) -> int:
        return len(self._kernel.entries)

    @property
    def context(self) -> CausalContext:
        return self._kernel.context.copy()

    def update(self, key: K, mutate: Callable[[V], object]) -> Self:
        """Change ``key``'s value by calling ``mutate`` on this replica's contribution.

        ``mutate`` receives a CRDT of ``value_type`` and calls its mutators, e.g.
        ``m.update("apples", lambda c: c.increment(2))``. Returns the map delta.
        """
        json_key(key)
        kernel = self._kernel
        dots = kernel.dots(key)
        own = [dot for dot in dots if dot.node == self._node]
        new_dot = kernel.context.next_dot(self._node)
        if own:
            old: Dot | None = max(own)
            contribution = dots[max(own)].copy()
        else:
            old = None
            contribution = self._value_type(f"{self._node}:{new_dot.counter}")
        mutate(contribution)
        delta = self._empty()
        delta._kernel.add(key, new_dot, contribution)
        if old is not None:
            delta._kernel.see([old])
        self._join(delta)
        return delta

    def remove(self, key: K) -> Self:
        """Remove ``key`` as observed here; returns the delta. Concurrent updates survive."""
        delta = self._empty()
        delta._kernel.see(list(self._kernel.dots(key)))
        self._join(delta)
        return delta

    def copy(self) -> Self:
        clone = self._blank()
        clone._value_type = self._value_type
        clone._kernel = self._kernel.copy()
        return clone

    def _empty(self) -> Self:
        return type(self)(self._node, self._value_type)

    def _compatible(self, other: object) -> bool:
        return (
            isinstance(other, ORMap)
            and type(other) is type(self)
            and (other._value_type is self._value_type)
        )

    def _describe(self) -> str:
        return self._value_type.__name__

    def _join(self, other: Self) -> None:
        self._kernel.join(other._kernel)

    def _same_state(self, other: Self) -> bool:
        return self._kernel.same(other._kernel)

    def _encode(self) -> dict[str, Any]:
        index: dict[str, int] = {}
        context = self._kernel.context.encode(index)
        entries: list[list[Any]] = []
        for key, dots in sorted(self._kernel.entries.items(), key=lambda i: json_key(i[0])):
            for dot in sorted(dots):
                contribution = dots[dot]
                epoch = int(contribution.node.rsplit(":", 1)[1])
                state = self._encode_value(contribution)
                entries.append([key, *encode_dots([dot], index), epoch, state])
        return {
            "value_type": self._value_type.type_name,
            "nodes": list(index),
            "context": context,
            "entries": entries,
        }

    @classmethod
    def _decode(cls, data: Mapping[str, Any], node: str) -> Self:
        value_type: Any = crdt_type(data.get("value_type"))
        return cls(node, value_type)._fill(data)

    def _fill(self, data: Mapping[str, Any]) -> Self:
        nodes = decode_nodes(data.get("nodes", []))
        kernel = self._kernel
        kernel.context = CausalContext.decode(data.get("context", {}), nodes)
        entries = data.get("entries", [])
        if not isinstance(entries, list):
            raise InvalidValueError(f"{self.type_name} entries must be a list, got {entries!r}")
        for entry in entries:
            if not isinstance(entry, list) or len(entry) != 5 or type(entry[3]) is not int:
                raise InvalidValueError(
                    f"a {self.type_name} entry is [key, node, counter, epoch, state], got {entry!r}"
                )
            key, epoch, state = entry[0], entry[3], entry[4]
            if isinstance(key, list | dict):
                raise InvalidValueError(f"{self.type_name} keys must be hashable, got {key!r}")
            (dot,) = decode_dots(entry[1:3], nodes)
            if not kernel.context.contains(dot):
                raise InvalidValueError(f"{self.type_name} dot {dot} is not in the state's context")
            value = self._decode_value(state, f"{dot.node}:{epoch}")
            kernel.entries.setdefault(key, {})[dot] = value
            kernel.owner[dot] = key
        return self

    def _encode_value(self, contribution: V) -> Any:
        """One contribution's state in an entry (its ``"type"`` is the map's ``value_type``)."""
        state = contribution.to_dict()
        del state["type"]
        return state

    def _decode_value(self, state: object, contribution_id: str) -> V:
        if not isinstance(state, Mapping):
            raise InvalidValueError(f"a {self.type_name} value must be an object, got {state!r}")
        return self._value_type.from_dict(
            {**state, "type": self._value_type.type_name}, node=contribution_id
        )


class Cart(ORMap[str, PNCounter]):
    """A shopping cart: item -> quantity, an OR-Map of PN-Counters.

    Concurrent adds of one item add up; a remove drops what the remover had seen,
    and an add concurrent with it survives (see the module docstring).
    """

    type_name = "cart"
    _wire_tag = ord("c")
    __slots__ = ()

    def __init__(self, node: str) -> None:
        super().__init__(node, PNCounter)

    def add(self, item: str, qty: int = 1) -> Self:
        """Add ``qty`` (non-zero; negative takes some out) of ``item``; returns the delta."""
        if not isinstance(item, str):
            raise InvalidValueError(f"a cart item must be a string, got {item!r}")
        if type(qty) is not int or qty == 0:
            raise InvalidValueError(f"a quantity change must be a non-zero int, got {qty!r}")
        return self.update(item, lambda counter: counter.add(qty))

    def quantities(self) -> dict[str, int]:
        """Items with a quantity above zero, and their quantities."""
        result: dict[str, int] = {}
        for item in self._kernel.entries:
            counter = self.get(item)
            assert counter is not None
            if counter.value > 0:
                result[item] = counter.value
        return dict(sorted(result.items()))

    def _empty(self) -> Self:
        return type(self)(self._node)

    def _encode_value(self, contribution: PNCounter) -> Any:
        # A contribution only ever counts under its own id: write just the two numbers,
        # ``up`` alone when nothing was taken out, ``[up, down]`` otherwise.
        own = contribution.node
        up, down = contribution.increments, contribution.decrements
        if set(up) <= {own} and set(down) <= {own}:
            return [up.get(own, 0), down[own]] if down else up.get(own, 0)
        return super()._encode_value(contribution)

    def _decode_value(self, state: object, contribution_id: str) -> PNCounter:
        if isinstance(state, Mapping):
            return super()._decode_value(state, contribution_id)
        pair: list[Any] = state if isinstance(state, list) else [state, 0]
        if len(pair) != 2 or any(type(x) is not int or x < 0 for x in pair):
            raise InvalidValueError(f"a cart quantity is up or [up, down], got {state!r}")
        up, down = pair
        return PNCounter._own(contribution_id, up, down)

    def _encode_wire(self, out: Writer) -> bytes | None:
        return encode_cart(self._kernel, out)

    @classmethod
    def _decode_wire(cls, body: Reader, node: str) -> Self:
        cart = cls(node)
        decode_cart(body, cart._kernel)
        return cart

    @classmethod
    def _decode(cls, data: Mapping[str, Any], node: str) -> Self:
        if data.get("value_type", PNCounter.type_name) != PNCounter.type_name:
            raise InvalidValueError(f"a cart holds pncounters, got {data.get('value_type')!r}")
        return cls(node)._fill(data)
