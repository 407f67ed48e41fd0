"""The graph interface: raw Cypher plus portable helpers for the common graph jobs.

Two layers:

- :meth:`GraphStore.query` passes Cypher to the backend *in its own dialect*
  (Ladybug is Kùzu's Cypher with typed node/rel tables; FalkorDB is schemaless
  openCypher). Values are always bound as parameters, never pasted into the text.
- The helpers (:meth:`~GraphStore.create_node`, :meth:`~GraphStore.neighbors`,
  :meth:`~GraphStore.shortest_path`, :meth:`~GraphStore.recommend` …) behave the
  same on every backend; each backend writes its own Cypher for them, and one
  conformance suite holds them to the same answers.

The helpers' data model:

- A node is identified by ``(label, key)``: ``key`` is a string stored in the
  property ``"key"`` (:data:`KEY_PROPERTY`). Labels and relationship types are
  identifiers (a letter, then letters, digits or ``_``); property names too.
- Property values are ``None``, ``bool``, ``int`` (64-bit), finite ``float``,
  ``str`` or a list of one of these. ``None`` means *absent*: setting a property
  to ``None`` removes it, and nodes read back never carry ``None`` properties.
- There is at most one relationship of a given type from one node to another;
  creating it again updates its properties.
- A node read back is a ``dict`` of its properties (``"key"`` included) plus
  ``"_label"`` (its label; the first one if a raw query gave it several) and
  ``"_id"`` (the backend's internal id: an ``int`` on FalkorDB, a
  ``"table:offset"`` string on Ladybug; opaque, and not stable across deletes).
  A relationship is a ``dict`` of its properties plus ``"_type"``, ``"_id"``,
  ``"_src"`` and ``"_dst"`` (internal ids); a path is the list of its nodes.
- Lists of nodes are sorted by key, then label.

Errors: a label or relationship type the graph has never seen, or a node that
does not exist, is :class:`~multistore.errors.NotFoundError`; a Cypher syntax
error is :class:`~multistore.errors.InvalidQueryError` with the backend's
message; a value that cannot be stored is
:class:`~multistore.errors.InvalidValueError`. A failing query or helper leaves
the graph as it was.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

from multistore.errors import NotFoundError
from multistore.stores._base import Store
from multistore.stores._limits import short_repr
from multistore.stores.graph._checks import (
    KEY_PROPERTY,
    Direction,
    PropertyValue,
    check_direction,
    check_k,
    check_key,
    check_max_hops,
    check_name,
    check_properties,
    sort_nodes,
)

__all__ = ["GraphStore", "Node", "node_not_found"]

Node = dict[str, Any]
"""A node (or relationship, or row) as returned by the store: a plain dict."""


def node_not_found(label: str, key: str) -> NotFoundError:
    return NotFoundError(f"no node ({label} {{{KEY_PROPERTY}: {short_repr(key)}}}) in the graph")


class GraphStore(Store, abc.ABC):
    """A property graph queried with Cypher. See the module docstring."""

    model: ClassVar[str] = "graph"

    # -- raw Cypher ------------------------------------------------------------------

    @abc.abstractmethod
    async def query(self, cypher: str, params: Mapping[str, Any] | None = None) -> list[Node]:
        """Run one Cypher query in the backend's dialect; ``$name`` placeholders are bound
        from ``params``. Rows come back as dicts keyed by the ``RETURN`` column names, with
        plain Python values (nodes, relationships and paths converted as described in the
        module docstring)."""

    # -- portable helpers -------------------------------------------------------------

    async def create_node(
        self, label: str, key: str, properties: Mapping[str, object] | None = None
    ) -> None:
        """Create the node ``(label, key)`` or update it (upsert): given properties are set,
        ``None`` removes one, properties not mentioned are kept."""
        label = check_name(label)
        key = check_key(key)
        props = check_properties(properties, f"node ({label} {short_repr(key)})", key)
        await self._merge_node(label, key, props)

    async def get_node(self, label: str, key: str) -> Node | None:
        """The node ``(label, key)``, or None when there is no such node."""
        return await self._get_node(check_name(label), check_key(key))

    async def create_relationship(
        self,
        from_label: str,
        from_key: str,
        rel_type: str,
        to_label: str,
        to_key: str,
        properties: Mapping[str, object] | None = None,
    ) -> None:
        """Create the relationship ``(from)-[:rel_type]->(to)`` or update its properties.
        Both nodes must exist (:class:`NotFoundError` otherwise)."""
        from_label = check_name(from_label)
        to_label = check_name(to_label)
        rel_type = check_name(rel_type, "relationship type")
        from_key = check_key(from_key)
        to_key = check_key(to_key)
        props = check_properties(properties, f"relationship {rel_type}")
        await self._merge_relationship(from_label, from_key, rel_type, to_label, to_key, props)

    async def neighbors(
        self,
        label: str,
        key: str,
        rel_type: str | None = None,
        direction: Direction = "out",
    ) -> list[Node]:
        """The distinct nodes one relationship away (of ``rel_type``, or of any type):
        following it (``"out"``), against it (``"in"``) or either way (``"both"``)."""
        label, key = check_name(label), check_key(key)
        rel = None if rel_type is None else check_name(rel_type, "relationship type")
        nodes = await self._neighbors(label, key, rel, check_direction(direction))
        return sort_nodes(nodes)

    async def friends_of_friends(self, label: str, key: str, rel_type: str) -> list[Node]:
        """The seed's query: distinct nodes two ``rel_type`` hops out, except the start.
        Direct friends are *not* excluded: a node that is both a friend and a friend of a
        friend is in the answer (as in ``MATCH (u)-[:R]->()-[:R]->(fof) WHERE fof <> u``)."""
        label, key = check_name(label), check_key(key)
        rel = check_name(rel_type, "relationship type")
        return sort_nodes(await self._friends_of_friends(label, key, rel))

    async def shortest_path(
        self,
        from_label: str,
        from_key: str,
        to_label: str,
        to_key: str,
        rel_type: str | None = None,
        direction: Direction = "both",
        max_hops: int = 10,
    ) -> list[Node] | None:
        """The nodes of a shortest path (fewest hops, at most ``max_hops``) from one node to
        another, both included; ``None`` when there is none. ``direction="both"`` ignores
        the direction of relationships, as the seed's ``-[:FOLLOWS*]-`` does. Among paths of
        equal length the backend picks one. From a node to itself the path is ``[node]``."""
        from_label, to_label = check_name(from_label), check_name(to_label)
        from_key, to_key = check_key(from_key), check_key(to_key)
        rel = None if rel_type is None else check_name(rel_type, "relationship type")
        way = check_direction(direction)
        hops = check_max_hops(max_hops)
        if (from_label, from_key) == (to_label, to_key):
            node = await self._get_node(from_label, from_key)
            if node is None:
                raise node_not_found(from_label, from_key)
            return [node]
        return await self._shortest_path(from_label, from_key, to_label, to_key, rel, way, hops)

    async def recommend(
        self, label: str, key: str, rel_type: str, k: int = 5
    ) -> list[tuple[Node, int]]:
        """Up to ``k`` nodes not yet connected to this one by ``rel_type`` (either
        direction), ranked by their number of common neighbours (``rel_type`` relationships
        in either direction), best first; ties go to the smaller key. Each comes with its
        count; nodes with no common neighbour are not recommended."""
        label, key = check_name(label), check_key(key)
        rel = check_name(rel_type, "relationship type")
        limit = check_k(k)
        if limit == 0:
            if await self._get_node(label, key) is None:
                raise node_not_found(label, key)
            return []
        found = await self._recommend(label, key, rel, limit)
        found.sort(
            key=lambda pair: (
                -pair[1],
                str(pair[0].get(KEY_PROPERTY, "")),
                str(pair[0].get("_label", "")),
            )
        )
        return found[:limit]

    async def delete_node(self, label: str, key: str) -> bool:
        """Delete the node and its relationships (DETACH DELETE). False if it did not
        exist; :class:`NotFoundError` if the label is unknown."""
        return await self._delete_node(check_name(label), check_key(key))

    async def count_nodes(self, label: str | None = None) -> int:
        """How many nodes (with ``label``, or in all)."""
        return await self._count_nodes(None if label is None else check_name(label))

    async def clear(self) -> None:
        """Delete every node and relationship, and forget labels, types and schema."""
        await self._clear()

    # -- what each backend writes ------------------------------------------------------

    @abc.abstractmethod
    async def _merge_node(
        self, label: str, key: str, props: dict[str, PropertyValue | None]
    ) -> None: ...

    @abc.abstractmethod
    async def _get_node(self, label: str, key: str) -> Node | None: ...

    @abc.abstractmethod
    async def _merge_relationship(
        self,
        from_label: str,
        from_key: str,
        rel_type: str,
        to_label: str,
        to_key: str,
        props: dict[str, PropertyValue | None],
    ) -> None: ...

    @abc.abstractmethod
    async def _neighbors(
        self, label: str, key: str, rel_type: str | None, direction: Direction
    ) -> list[Node]: ...

    @abc.abstractmethod
    async def _friends_of_friends(self, label: str, key: str, rel_type: str) -> list[Node]: ...

    @abc.abstractmethod
    async def _shortest_path(
        self,
        from_label: str,
        from_key: str,
        to_label: str,
        to_key: str,
        rel_type: str | None,
        direction: Direction,
        max_hops: int,
    ) -> list[Node] | None: ...

    @abc.abstractmethod
    async def _recommend(
        self, label: str, key: str, rel_type: str, k: int
    ) -> list[tuple[Node, int]]: ...

    @abc.abstractmethod
    async def _delete_node(self, label: str, key: str) -> bool: ...

    @abc.abstractmethod
    async def _count_nodes(self, label: str | None) -> int: ...

    @abc.abstractmethod
    async def _clear(self) -> None: ...
