"""The graph model: Cypher, plus portable helpers for nodes, relationships,
friends-of-friends, shortest paths and recommendations.

Backends: ``ladybug:///path`` (embedded, :class:`LadybugGraphStore` in ``_ladybug``)
and ``falkordb://host:port/graph`` (:class:`FalkorDBGraphStore` in ``_falkordb``).
Open one with :func:`multistore.stores.open_store`.
"""

from multistore.stores.graph._api import GraphStore, Node
from multistore.stores.graph._checks import KEY_PROPERTY, MAX_HOPS, Direction

__all__ = ["KEY_PROPERTY", "MAX_HOPS", "Direction", "GraphStore", "Node"]
