"""The server graph backend: FalkorDB (Redis module, openCypher, schemaless).

``falkordb://[user:password@]host:port/graph`` selects one graph on the server
(default name ``multistore``). The store talks to the server with the
``falkordb.asyncio`` graph class over its own ``redis.asyncio`` connection pool
(the client's ``FalkorDB()`` constructor makes a blocking call to the server, so it
is not used). Parameters go in FalkorDB's ``CYPHER name=value`` header, which the
client writes as Cypher literals; so :meth:`query` accepts only parameter values
it can write safely (None, bool, int, float, str, lists and string-keyed maps),
and anything else is :class:`~multistore.errors.InvalidValueError`.

FalkorDB needs no schema. The helpers create a range index on ``key`` for each
label the first time this store writes a node of it. A query is atomic on the
server: when it fails, nothing it did stays. Labels and relationship types stay
known until :meth:`clear` deletes the graph.

Errors: a refused or dropped connection is
:class:`~multistore.errors.StoreUnavailableError`, no answer within the URL's
``timeout`` (default 5 s) is :class:`~multistore.errors.StoreTimeoutError`.
redis-py's retries are off (a query is sent once); a connection the server closed
is replaced when the pool hands it out, so the store works again as soon as a
restarted server is back.

URL options: ``timeout``, ``connect_timeout`` (default: ``timeout``), ``pool_max``
(default 10), ``ssl``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Final, Self

import redis.asyncio as aioredis
from falkordb.asyncio.graph import AsyncGraph
from falkordb.edge import Edge as FalkorEdge
from falkordb.node import Node as FalkorNode
from falkordb.path import Path as FalkorPath
from redis import exceptions as rex
from redis.asyncio.connection import BlockingConnectionPool, Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from multistore.errors import (
    DuplicateKeyError,
    InvalidQueryError,
    InvalidValueError,
    MultistoreError,
    NotFoundError,
    Outcome,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
    UnsupportedError,
    UsageError,
)
from multistore.stores._limits import short_repr
from multistore.stores.graph._api import GraphStore, Node, node_not_found
from multistore.stores.graph._checks import (
    KEY_PROPERTY,
    Direction,
    PropertyValue,
    arrow,
    check_cypher,
    check_params,
    quote,
)
from multistore.urls import StoreURL

__all__ = ["FalkorDBGraphStore"]

DEFAULT_GRAPH: Final = "multistore"
_K: Final = quote(KEY_PROPERTY)
_SP_DIRECTION: Final = {"out": "outgoing", "in": "incoming", "both": "both"}
#: Replies that say the server (not the query) is in trouble.
_SERVER_TROUBLE: Final = ("OOM", "READONLY", "MISCONF", "BUSY", "MASTERDOWN", "CLUSTERDOWN")


def _plain(value: Any) -> Any:
    """The client's result values as the interface's plain values."""
    if isinstance(value, FalkorNode):
        node = {k: _plain(v) for k, v in value.properties.items() if v is not None}
        node["_label"] = value.labels[0] if value.labels else None
        node["_id"] = value.id
        return node
    if isinstance(value, FalkorEdge):
        rel = {k: _plain(v) for k, v in value.properties.items() if v is not None}
        rel.update(
            _type=value.relation,
            _id=value.id,
            _src=getattr(value.src_node, "id", value.src_node),
            _dst=getattr(value.dest_node, "id", value.dest_node),
        )
        return rel
    if isinstance(value, FalkorPath):
        return [_plain(node) for node in value.nodes()]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _sets(props: dict[str, PropertyValue | None]) -> tuple[str, dict[str, Any]]:
    """A ``SET`` clause for ``props`` on ``x`` (``None`` removes) and its parameters."""
    items: list[str] = []
    params: dict[str, Any] = {}
    for i, (name, value) in enumerate(props.items()):
        if value is None:
            items.append(f"x.{quote(name)} = NULL")
        else:
            items.append(f"x.{quote(name)} = $p{i}")
            params[f"p{i}"] = value
    return (" SET " + ", ".join(items) if items else ""), params


class FalkorDBGraphStore(GraphStore):
    """Graph store on a FalkorDB server. See the module docstring."""

    def __init__(self, url: StoreURL, client: aioredis.Redis, graph: AsyncGraph) -> None:
        self.url = url
        self._client = client
        self._graph = graph
        self._indexed: set[str] = set()
        self._closed = False

    @classmethod
    async def open(cls, url: StoreURL) -> Self:
        timeout = url.float_option("timeout", 5.0)
        pool = BlockingConnectionPool(
            max_connections=url.int_option("pool_max", 10),
            timeout=timeout,
            connection_class=SSLConnection if url.option("ssl", False) else Connection,
            host=url.host or "127.0.0.1",
            port=url.port or 6379,
            username=url.username,
            password=url.password,
            socket_timeout=timeout,
            socket_connect_timeout=url.float_option("connect_timeout", timeout),
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        client = aioredis.Redis.from_pool(pool)
        store = cls(url, client, AsyncGraph(client, url.database or DEFAULT_GRAPH))
        try:
            with store._errors("connect"):
                try:
                    await client.execute_command("GRAPH.LIST")  # type: ignore[no-untyped-call]
                except rex.ResponseError as exc:
                    raise UnsupportedError(
                        f"the server at {url} does not serve FalkorDB graphs "
                        f"(GRAPH.LIST: {exc}); is the FalkorDB module loaded?"
                    ) from None
        except MultistoreError as exc:
            await client.aclose()
            exc.outcome = Outcome.DEFINITE
            raise
        return store

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._client.aclose()

    @property
    def native(self) -> AsyncGraph:
        """The ``falkordb.asyncio`` graph object (``.client`` is the ``redis.asyncio``
        client)."""
        return self._graph

    @property
    def graph_name(self) -> str:
        return str(self._graph.name)

    # -- plumbing ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        if self._closed:
            raise UsageError(f"the graph store {self.url} is closed")
        where = f"{what} on {self.url}"
        try:
            yield
        except MultistoreError:
            raise
        except rex.TimeoutError as exc:
            raise StoreTimeoutError(f"FalkorDB did not answer in time: {where}") from exc
        except rex.ConnectionError as exc:
            raise StoreUnavailableError(f"FalkorDB unreachable: {where}: {exc}") from exc
        except rex.ResponseError as exc:
            text = str(exc)
            if text.startswith(_SERVER_TROUBLE):
                raise StoreError(f"FalkorDB error: {where}: {text}") from exc
            if "timed out" in text.lower():
                raise StoreTimeoutError(f"{where}: {text}", outcome=Outcome.DEFINITE) from None
            if "Property values can only be" in text:
                raise InvalidValueError(f"{where}: {text}") from None
            if "unique constraint" in text.lower():
                raise DuplicateKeyError(f"{where}: {text}") from None
            raise InvalidQueryError(f"{where}: {text}") from None
        except rex.RedisError as exc:
            raise StoreError(f"FalkorDB error: {where}: {exc}") from exc
        except (TypeError, ValueError) as exc:  # the client failing on a reply or parameter
            raise StoreError(f"FalkorDB client error: {where}: {exc}") from exc

    async def _rows(
        self, what: str, cypher: str, params: Mapping[str, Any] | None = None
    ) -> list[list[Any]]:
        with self._errors(what):
            result = await self._graph.query(cypher, dict(params) if params else None)
            return [list(row) for row in result.result_set]

    async def _names(self, procedure: str) -> set[str]:
        rows = await self._rows("schema", f"CALL {procedure}()")
        return {str(row[0]) for row in rows}

    async def _missing_node(self, label: str, key: str) -> NotFoundError:
        if label not in await self._names("db.labels"):
            return NotFoundError(
                f"unknown node label {short_repr(label)}: the graph has no such label"
            )
        return node_not_found(label, key)

    async def _check_rel_type(self, rel_type: str | None) -> None:
        if rel_type is not None and rel_type not in await self._names("db.relationshipTypes"):
            raise NotFoundError(
                f"unknown relationship type {short_repr(rel_type)}: the graph has no such type"
            )

    async def _ensure_index(self, label: str) -> None:
        if label in self._indexed:
            return
        try:
            await self._rows("create_node", f"CREATE INDEX FOR (n:{quote(label)}) ON (n.{_K})")
        except InvalidQueryError as exc:
            if "already indexed" not in str(exc):
                raise
        self._indexed.add(label)

    # -- raw Cypher --------------------------------------------------------------------

    async def query(self, cypher: str, params: Mapping[str, Any] | None = None) -> list[Node]:
        check_cypher(cypher)
        bound = check_params(params, strict=True)
        with self._errors("query"):
            result = await self._graph.query(cypher, bound or None)
            columns = [str(column[1]) for column in result.header]
            return [
                {c: _plain(v) for c, v in zip(columns, row, strict=True)}
                for row in result.result_set
            ]

    # -- helpers -----------------------------------------------------------------------

    async def _merge_node(
        self, label: str, key: str, props: dict[str, PropertyValue | None]
    ) -> None:
        await self._ensure_index(label)
        sets, params = _sets(props)
        params["key"] = key
        await self._rows("create_node", f"MERGE (x:{quote(label)} {{{_K}: $key}}){sets}", params)

    async def _get_node(self, label: str, key: str) -> Node | None:
        rows = await self._rows(
            "get_node", f"MATCH (n:{quote(label)} {{{_K}: $key}}) RETURN n LIMIT 1", {"key": key}
        )
        if rows:
            node: Node = _plain(rows[0][0])
            return node
        if label not in await self._names("db.labels"):
            raise NotFoundError(
                f"unknown node label {short_repr(label)}: the graph has no such label"
            )
        return None

    async def _merge_relationship(
        self,
        from_label: str,
        from_key: str,
        rel_type: str,
        to_label: str,
        to_key: str,
        props: dict[str, PropertyValue | None],
    ) -> None:
        sets, params = _sets(props)
        params.update({"from": from_key, "to": to_key})
        rows = await self._rows(
            "create_relationship",
            f"MATCH (a:{quote(from_label)} {{{_K}: $from}}), (b:{quote(to_label)} {{{_K}: $to}}) "
            f"MERGE (a)-[x:{quote(rel_type)}]->(b){sets} RETURN count(x)",
            params,
        )
        if not rows or not rows[0][0]:
            if await self._get_node(from_label, from_key) is None:
                raise node_not_found(from_label, from_key)
            raise await self._missing_node(to_label, to_key)

    async def _neighbors(
        self, label: str, key: str, rel_type: str | None, direction: Direction
    ) -> list[Node]:
        rows = await self._rows(
            "neighbors",
            f"MATCH (u:{quote(label)} {{{_K}: $key}}) "
            f"OPTIONAL MATCH (u){arrow(rel_type, direction)}(n) RETURN DISTINCT n",
            {"key": key},
        )
        return await self._nodes_or_explain(rows, label, key, rel_type)

    async def _nodes_or_explain(
        self, rows: list[list[Any]], label: str, key: str, rel_type: str | None
    ) -> list[Node]:
        """Nodes of an ``OPTIONAL MATCH`` answer; no row at all means no start node."""
        if not rows:
            raise await self._missing_node(label, key)
        nodes = [_plain(row[0]) for row in rows if row[0] is not None]
        if not nodes:
            await self._check_rel_type(rel_type)
        return nodes

    async def _friends_of_friends(self, label: str, key: str, rel_type: str) -> list[Node]:
        step = arrow(rel_type, "out")
        rows = await self._rows(
            "friends_of_friends",
            f"MATCH (u:{quote(label)} {{{_K}: $key}}) "
            f"OPTIONAL MATCH (u){step}(){step}(f) WHERE f <> u RETURN DISTINCT f",
            {"key": key},
        )
        return await self._nodes_or_explain(rows, label, key, rel_type)

    async def _shortest_path(
        self,
        from_label: str,
        from_key: str,
        to_label: str,
        to_key: str,
        rel_type: str | None,
        direction: Direction,
        max_hops: int,
    ) -> list[Node] | None:
        # shortestPath() in FalkorDB cannot go both ways; algo.SPpaths can.
        types = "relTypes: $types, " if rel_type is not None else ""
        rows = await self._rows(
            "shortest_path",
            f"MATCH (a:{quote(from_label)} {{{_K}: $from}}), (b:{quote(to_label)} {{{_K}: $to}}) "
            f"CALL algo.SPpaths({{sourceNode: a, targetNode: b, {types}"
            f"relDirection: '{_SP_DIRECTION[direction]}', maxLen: $hops, pathCount: 1}}) "
            "YIELD path RETURN nodes(path) LIMIT 1",
            {"from": from_key, "to": to_key, "types": [rel_type], "hops": max_hops},
        )
        if rows:
            return [_plain(node) for node in rows[0][0]]
        for label, key in ((from_label, from_key), (to_label, to_key)):
            if await self._get_node(label, key) is None:
                raise node_not_found(label, key)
        await self._check_rel_type(rel_type)
        return None

    async def _recommend(
        self, label: str, key: str, rel_type: str, k: int
    ) -> list[tuple[Node, int]]:
        step = arrow(rel_type, "both")
        rows = await self._rows(
            "recommend",
            f"MATCH (u:{quote(label)} {{{_K}: $key}}){step}(m){step}(c) "
            f"WHERE c <> u AND NOT (u){step}(c) "
            "WITH c, count(DISTINCT m) AS score "
            f"RETURN c, score ORDER BY score DESC, c.{_K}, labels(c)[0] LIMIT $k",
            {"key": key, "k": k},
        )
        if not rows:
            if await self._get_node(label, key) is None:
                raise node_not_found(label, key)
            await self._check_rel_type(rel_type)
        return [(_plain(row[0]), int(row[1])) for row in rows]

    async def _delete_node(self, label: str, key: str) -> bool:
        with self._errors("delete_node"):
            result = await self._graph.query(
                f"MATCH (n:{quote(label)} {{{_K}: $key}}) DETACH DELETE n", {"key": key}
            )
        if result.nodes_deleted:
            return True
        if label not in await self._names("db.labels"):
            raise NotFoundError(
                f"unknown node label {short_repr(label)}: the graph has no such label"
            )
        return False

    async def _count_nodes(self, label: str | None) -> int:
        pattern = "(n)" if label is None else f"(n:{quote(label)})"
        rows = await self._rows("count_nodes", f"MATCH {pattern} RETURN count(n)")
        count = int(rows[0][0])
        if count == 0 and label is not None and label not in await self._names("db.labels"):
            raise NotFoundError(
                f"unknown node label {short_repr(label)}: the graph has no such label"
            )
        return count

    async def _clear(self) -> None:
        with self._errors("clear"):
            try:
                await self._graph.delete()
            except rex.ResponseError as exc:
                if "empty key" not in str(exc):
                    raise
        # Label, type and property ids start again from 0 in a new graph.
        self._graph.schema.clear()
        self._indexed.clear()
