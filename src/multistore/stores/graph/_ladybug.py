"""The embedded graph backend: Ladybug (Kùzu's successor), Cypher over typed tables.

``ladybug:///path/to/graph.lbdb`` opens (or creates) a database file;
``ladybug:///:memory:`` is a throwaway in-memory graph. The driver blocks, so every
call runs on the store's own worker thread, which owns the connection.

Ladybug wants a schema: a NODE TABLE per label (with a primary key) and a REL
TABLE per relationship type (with its FROM/TO label pairs). The helpers make it
as they go, in the same transaction as the write that needs it:

- the first node of a label creates ``NODE TABLE Label(key STRING PRIMARY KEY, …)``
  with a column per property, its type inferred from the value (bool BOOLEAN, int
  INT64, float DOUBLE, str STRING, lists ``T[]``; an empty list STRING[]);
- a property not seen before adds a column (``ALTER TABLE … ADD``);
- the first relationship of a type creates the REL TABLE, and a new pair of labels
  is added to it (``ALTER TABLE … ADD FROM A TO B``).

After that a column keeps its type: a value of another type is
:class:`~multistore.errors.InvalidValueError` (an int is accepted for a DOUBLE
column and stored as a float). Ladybug compares table and property names without
regard to case. The schema is cached and re-read after a raw query that looks
like DDL (it mentions TABLE, ALTER, DROP …).

URL options: ``timeout`` (seconds; a query running longer is interrupted and
raises :class:`~multistore.errors.StoreTimeoutError`).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final, Self, TypeVar

import ladybug

from multistore.errors import (
    ConflictError,
    DuplicateKeyError,
    InvalidQueryError,
    InvalidValueError,
    MultistoreError,
    NotFoundError,
    Outcome,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
    UsageError,
)
from multistore.stores._limits import short_repr
from multistore.stores._worker import Worker
from multistore.stores.graph._api import GraphStore, Node, node_not_found
from multistore.stores.graph._checks import (
    KEY_PROPERTY,
    MAX_HOPS,
    Direction,
    PropertyValue,
    arrow,
    check_cypher,
    check_params,
    quote,
)
from multistore.urls import StoreURL

__all__ = ["LadybugGraphStore"]

T = TypeVar("T")

#: A raw query that may change the schema makes the cached catalog stale.
_DDL_RE: Final = re.compile(r"(?i)\b(TABLE|ALTER|DROP|IMPORT|ATTACH|DETACH\s+DATABASE|USE)\b")
_INT_TYPES: Final = frozenset(
    {"INT8", "INT16", "INT32", "INT64", "INT128", "UINT8", "UINT16", "UINT32", "UINT64", "SERIAL"}
)
_FLOAT_TYPES: Final = frozenset({"FLOAT", "DOUBLE"})
_K: Final = quote(KEY_PROPERTY)


@dataclass
class _Table:
    name: str
    columns: dict[str, tuple[str, str]] = field(default_factory=dict)
    """lower-case property name -> (name, Ladybug type)"""
    pairs: set[tuple[str, str]] = field(default_factory=set)
    """REL tables: the (FROM, TO) node tables, lower-case."""


@dataclass
class _Catalog:
    nodes: dict[str, _Table] = field(default_factory=dict)
    rels: dict[str, _Table] = field(default_factory=dict)


# -- values ----------------------------------------------------------------------------


def _column_type(value: PropertyValue) -> str:
    if isinstance(value, list):
        if not value:
            return "STRING[]"
        if any(isinstance(v, float) for v in value):
            return "DOUBLE[]"
        return _column_type(value[0]) + "[]"
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, int):
        return "INT64"
    if isinstance(value, float):
        return "DOUBLE"
    return "STRING"


def _fit(where: str, value: object, column_type: str) -> object:
    """The value converted for a column of ``column_type``, or InvalidValueError."""
    kind = column_type.upper()
    if kind.endswith("[]"):
        if isinstance(value, list):
            return [_fit(where, item, kind[:-2]) for item in value]
    elif kind in ("BOOL", "BOOLEAN"):
        if isinstance(value, bool):
            return value
    elif kind in _INT_TYPES:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind in _FLOAT_TYPES:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind == "STRING":
        if isinstance(value, str):
            return value
    else:
        return value  # a type made by raw DDL (DATE, …): Ladybug decides
    raise InvalidValueError(
        f"{where}: the column has type {column_type}, which cannot hold {short_repr(value)}"
    )


def _plain(value: Any) -> Any:
    """Ladybug's result values as the interface's plain values."""
    if isinstance(value, dict):
        if "_NODES" in value and "_RELS" in value:
            return [_plain(node) for node in value["_NODES"]]
        if "_SRC" in value and "_DST" in value and "_LABEL" in value:
            rel = _props(value, ("_SRC", "_DST", "_LABEL", "_ID"))
            rel.update(
                _type=value["_LABEL"],
                _id=_plain(value.get("_ID")),
                _src=_plain(value["_SRC"]),
                _dst=_plain(value["_DST"]),
            )
            return rel
        if "_ID" in value and "_LABEL" in value:
            node = _props(value, ("_ID", "_LABEL"))
            node.update(_label=value["_LABEL"], _id=_plain(value["_ID"]))
            return node
        if set(value) == {"offset", "table"}:
            return f"{value['table']}:{value['offset']}"
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _props(value: dict[str, Any], internal: tuple[str, ...]) -> dict[str, Any]:
    return {k: _plain(v) for k, v in value.items() if k not in internal and v is not None}


def _error(exc: Exception, what: str) -> MultistoreError:
    """A Ladybug exception as the error tree's most specific member."""
    if isinstance(exc, MultistoreError):
        return exc
    text = str(exc).strip()
    message = f"{what}: {text}"
    if text.startswith("Parser exception") or (
        text.startswith("Parameter ") and text.endswith(" not found.")
    ):
        return InvalidQueryError(message)
    if text.startswith(("Binder exception", "Catalog exception")):
        if "does not exist" in text:
            return NotFoundError(message)
        return InvalidQueryError(message)
    if "duplicated primary key" in text:
        return DuplicateKeyError(message)
    if text.startswith(("Conversion exception", "Overflow exception")) or (
        "Unable to cast Python" in text
    ):
        return InvalidValueError(message)
    if "has connected edges" in text:
        return ConflictError(message)
    if text.startswith("Interrupted"):
        return StoreTimeoutError(message, outcome=Outcome.DEFINITE)
    if text.startswith("Runtime exception") or "transaction" in text.lower():
        return InvalidQueryError(message)
    return StoreError(message)


class LadybugGraphStore(GraphStore):
    """Graph store on an embedded Ladybug database. See the module docstring."""

    def __init__(self, url: StoreURL, shared: _Shared, conn: Any) -> None:
        self.url = url
        self._shared = shared
        self._worker = shared.worker
        self._conn = conn
        self._closed = False

    @classmethod
    async def open(cls, url: StoreURL) -> Self:
        shared = _Shared.acquire(url.path)
        try:
            conn = await shared.worker.run(shared.connect, url.option("timeout"))
        except Exception as exc:
            await shared.release()
            raise StoreUnavailableError(
                f"cannot open the Ladybug database {short_repr(url.path)}: "
                f"{' '.join(str(exc).split())}",
                outcome=Outcome.DEFINITE,
            ) from exc
        except BaseException:
            await shared.release()
            raise
        return cls(url, shared, conn)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                await self._worker.run(self._conn.close)
            finally:
                await self._shared.release()

    @property
    def native(self) -> Any:
        """The ``ladybug.Connection``. It blocks: call it from a thread of your own, never
        at the same time as the store."""
        return self._conn

    # -- plumbing (the _sync_* methods run on the worker thread) ------------------------

    async def _run(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise UsageError(f"the graph store {self.url} is closed")
        try:
            return await self._worker.run(fn, *args)
        except MultistoreError:
            raise
        except Exception as exc:
            raise _error(exc, what) from exc

    def _rows(self, cypher: str, params: Mapping[str, Any] | None = None) -> list[list[Any]]:
        result = self._conn.execute(cypher, dict(params or {}))
        results = result if isinstance(result, list) else [result]
        try:
            return [list(row) for row in results[-1].get_all()]
        finally:
            for each in results:
                each.close()

    def _catalog(self) -> _Catalog:
        if self._shared.catalog is None:
            catalog = _Catalog()
            for row in self._rows("CALL show_tables() RETURN *"):
                name, kind = str(row[1]), str(row[2])
                table = _Table(name)
                literal = name.replace("\\", "\\\\").replace("'", "\\'")
                for info in self._rows(f"CALL table_info('{literal}') RETURN *"):
                    table.columns[str(info[1]).lower()] = (str(info[1]), str(info[2]))
                if kind == "NODE":
                    catalog.nodes[name.lower()] = table
                else:
                    for pair in self._rows(f"CALL show_connection('{literal}') RETURN *"):
                        table.pairs.add((str(pair[0]).lower(), str(pair[1]).lower()))
                    catalog.rels[name.lower()] = table
            self._shared.catalog = catalog
        return self._shared.catalog

    def _node_table(self, label: str) -> _Table:
        table = self._catalog().nodes.get(label.lower())
        if table is None:
            raise NotFoundError(
                f"unknown node label {short_repr(label)}: the graph has no such label"
            )
        if KEY_PROPERTY not in table.columns:
            raise InvalidQueryError(
                f"label {short_repr(label)} was not made by the helpers: it has no "
                f"{short_repr(KEY_PROPERTY)} "
                "property; use query() for it"
            )
        return table

    def _rel_table(self, rel_type: str | None) -> _Table | None:
        if rel_type is None:
            return None
        table = self._catalog().rels.get(rel_type.lower())
        if table is None:
            raise NotFoundError(
                f"unknown relationship type {short_repr(rel_type)}: the graph has no such type"
            )
        return table

    def _transaction(self, fn: Callable[[], T]) -> T:
        self._rows("BEGIN TRANSACTION")
        try:
            result = fn()
            self._rows("COMMIT")
        except BaseException:
            self._shared.catalog = None
            with contextlib.suppress(Exception):  # the first error is the one to report
                self._rows("ROLLBACK")
            raise
        return result

    def _exists(self, table: _Table, key: str) -> bool:
        rows = self._rows(
            f"MATCH (n:{quote(table.name)} {{{_K}: $key}}) RETURN count(n)", {"key": key}
        )
        return bool(rows[0][0])

    def _columns(
        self, table: _Table, props: dict[str, PropertyValue | None], what: str
    ) -> tuple[list[str], list[str], dict[str, Any]]:
        """(ALTER statements for new columns, SET items, parameters) for ``props``."""
        ddl: list[str] = []
        sets: list[str] = []
        params: dict[str, Any] = {}
        for i, (name, value) in enumerate(props.items()):
            column = table.columns.get(name.lower())
            if column is None:
                if value is None:
                    continue
                column = (name, _column_type(value))
                ddl.append(f"ALTER TABLE {quote(table.name)} ADD {quote(name)} {column[1]}")
            if value is None:
                sets.append(f"x.{quote(column[0])} = NULL")
            else:
                params[f"p{i}"] = _fit(f"{what}, property {short_repr(name)}", value, column[1])
                sets.append(f"x.{quote(column[0])} = $p{i}")
        return ddl, sets, params

    # -- raw Cypher --------------------------------------------------------------------

    async def query(self, cypher: str, params: Mapping[str, Any] | None = None) -> list[Node]:
        check_cypher(cypher)
        bound = check_params(params, strict=False)
        return await self._run("query", self._sync_query, cypher, bound)

    def _sync_query(self, cypher: str, params: dict[str, Any]) -> list[Node]:
        try:
            result = self._conn.execute(cypher, params)
        finally:
            if _DDL_RE.search(cypher):
                self._shared.catalog = None
        results = result if isinstance(result, list) else [result]
        try:
            last = results[-1]
            columns = list(last.get_column_names())
            return [
                {c: _plain(v) for c, v in zip(columns, row, strict=True)} for row in last.get_all()
            ]
        finally:
            for each in results:
                each.close()

    # -- helpers -----------------------------------------------------------------------

    async def _merge_node(
        self, label: str, key: str, props: dict[str, PropertyValue | None]
    ) -> None:
        await self._run("create_node", self._sync_merge_node, label, key, props)

    def _sync_merge_node(
        self, label: str, key: str, props: dict[str, PropertyValue | None]
    ) -> None:
        what = f"node ({label} {short_repr(key)})"
        catalog = self._catalog()
        ddl: list[str] = []
        table = catalog.nodes.get(label.lower())
        if table is None:
            if label.lower() in catalog.rels:
                raise InvalidQueryError(
                    f"{short_repr(label)} is a relationship type here, not a label"
                )
            table = _Table(label, {KEY_PROPERTY: (KEY_PROPERTY, "STRING")})
            columns = [f"{_K} STRING PRIMARY KEY"]
            for name, value in props.items():
                if value is not None and name.lower() not in table.columns:
                    table.columns[name.lower()] = (name, _column_type(value))
                    columns.append(f"{quote(name)} {table.columns[name.lower()][1]}")
            ddl.append(f"CREATE NODE TABLE {quote(label)}({', '.join(columns)})")
        elif KEY_PROPERTY not in table.columns:
            self._node_table(label)  # raises the explanation
        alters, sets, params = self._columns(table, props, what)
        cypher = f"MERGE (x:{quote(table.name)} {{{_K}: $key}})"
        if sets:
            cypher += " SET " + ", ".join(sets)
        params["key"] = key

        def work() -> None:
            for statement in ddl + alters:
                self._rows(statement)
            self._rows(cypher, params)

        if ddl or alters:
            self._transaction(work)
            self._shared.catalog = None
        else:
            work()

    async def _get_node(self, label: str, key: str) -> Node | None:
        return await self._run("get_node", self._sync_get_node, label, key)

    def _sync_get_node(self, label: str, key: str) -> Node | None:
        table = self._node_table(label)
        rows = self._rows(f"MATCH (n:{quote(table.name)} {{{_K}: $key}}) RETURN n", {"key": key})
        return _plain(rows[0][0]) if rows else None

    async def _merge_relationship(
        self,
        from_label: str,
        from_key: str,
        rel_type: str,
        to_label: str,
        to_key: str,
        props: dict[str, PropertyValue | None],
    ) -> None:
        await self._run(
            "create_relationship",
            self._sync_merge_relationship,
            from_label,
            from_key,
            rel_type,
            to_label,
            to_key,
            props,
        )

    def _sync_merge_relationship(
        self,
        from_label: str,
        from_key: str,
        rel_type: str,
        to_label: str,
        to_key: str,
        props: dict[str, PropertyValue | None],
    ) -> None:
        source, target = self._node_table(from_label), self._node_table(to_label)
        for table, key in ((source, from_key), (target, to_key)):
            if not self._exists(table, key):
                raise node_not_found(table.name, key)
        catalog = self._catalog()
        ddl: list[str] = []
        pair = (source.name.lower(), target.name.lower())
        rel = catalog.rels.get(rel_type.lower())
        if rel is None:
            if rel_type.lower() in catalog.nodes:
                raise InvalidQueryError(
                    f"{short_repr(rel_type)} is a node label here, not a relationship"
                )
            rel = _Table(rel_type, pairs={pair})
            columns = [f"FROM {quote(source.name)} TO {quote(target.name)}"]
            for name, value in props.items():
                if value is not None and name.lower() not in rel.columns:
                    rel.columns[name.lower()] = (name, _column_type(value))
                    columns.append(f"{quote(name)} {rel.columns[name.lower()][1]}")
            ddl.append(f"CREATE REL TABLE {quote(rel_type)}({', '.join(columns)})")
        elif pair not in rel.pairs:
            ddl.append(
                f"ALTER TABLE {quote(rel.name)} ADD FROM {quote(source.name)} "
                f"TO {quote(target.name)}"
            )
        alters, sets, params = self._columns(rel, props, f"relationship {rel_type}")
        cypher = (
            f"MATCH (a:{quote(source.name)} {{{_K}: $from}}), "
            f"(b:{quote(target.name)} {{{_K}: $to}}) "
            f"MERGE (a)-[x:{quote(rel.name)}]->(b)"
        )
        if sets:
            cypher += " SET " + ", ".join(sets)
        params.update({"from": from_key, "to": to_key})

        def work() -> None:
            for statement in ddl + alters:
                self._rows(statement)
            self._rows(cypher, params)

        if ddl or alters:
            self._transaction(work)
            self._shared.catalog = None
        else:
            work()

    async def _neighbors(
        self, label: str, key: str, rel_type: str | None, direction: Direction
    ) -> list[Node]:
        return await self._run("neighbors", self._sync_neighbors, label, key, rel_type, direction)

    def _sync_neighbors(
        self, label: str, key: str, rel_type: str | None, direction: Direction
    ) -> list[Node]:
        table = self._node_table(label)
        rel = self._rel_table(rel_type)
        rows: list[list[Any]] = []
        if rel is not None or self._catalog().rels:
            rows = self._rows(
                f"MATCH (u:{quote(table.name)} {{{_K}: $key}})"
                f"{arrow(rel.name if rel else None, direction)}(n) RETURN DISTINCT n",
                {"key": key},
            )
        if not rows and not self._exists(table, key):
            raise node_not_found(label, key)
        return [_plain(row[0]) for row in rows]

    async def _friends_of_friends(self, label: str, key: str, rel_type: str) -> list[Node]:
        return await self._run("friends_of_friends", self._sync_fof, label, key, rel_type)

    def _sync_fof(self, label: str, key: str, rel_type: str) -> list[Node]:
        table = self._node_table(label)
        rel = self._rel_table(rel_type)
        assert rel is not None
        step = arrow(rel.name, "out")
        rows = self._rows(
            f"MATCH (u:{quote(table.name)} {{{_K}: $key}}){step}(){step}(f) "
            "WHERE f <> u RETURN DISTINCT f",
            {"key": key},
        )
        if not rows and not self._exists(table, key):
            raise node_not_found(label, key)
        return [_plain(row[0]) for row in rows]

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
        return await self._run(
            "shortest_path",
            self._sync_shortest_path,
            from_label,
            from_key,
            to_label,
            to_key,
            rel_type,
            direction,
            max_hops,
        )

    def _sync_shortest_path(
        self,
        from_label: str,
        from_key: str,
        to_label: str,
        to_key: str,
        rel_type: str | None,
        direction: Direction,
        max_hops: int,
    ) -> list[Node] | None:
        source, target = self._node_table(from_label), self._node_table(to_label)
        rel = self._rel_table(rel_type)
        for table, key in ((source, from_key), (target, to_key)):
            if not self._exists(table, key):
                raise node_not_found(table.name, key)
        if rel is None and not self._catalog().rels:
            return None
        hops = f"* SHORTEST 1..{max_hops}"
        # Not OPTIONAL MATCH: Ladybug then answers a one-node "path" when there is none.
        rows = self._rows(
            f"MATCH p = (a:{quote(source.name)} {{{_K}: $from}})"
            f"{arrow(rel.name if rel else None, direction, hops=hops)}"
            f"(b:{quote(target.name)} {{{_K}: $to}}) RETURN nodes(p) LIMIT 1",
            {"from": from_key, "to": to_key},
        )
        return [_plain(node) for node in rows[0][0]] if rows else None

    async def _recommend(
        self, label: str, key: str, rel_type: str, k: int
    ) -> list[tuple[Node, int]]:
        return await self._run("recommend", self._sync_recommend, label, key, rel_type, k)

    def _sync_recommend(
        self, label: str, key: str, rel_type: str, k: int
    ) -> list[tuple[Node, int]]:
        table = self._node_table(label)
        rel = self._rel_table(rel_type)
        assert rel is not None
        step = arrow(rel.name, "both")
        rows = self._rows(
            f"MATCH (u:{quote(table.name)} {{{_K}: $key}}){step}(m){step}(c) "
            f"WHERE c <> u AND NOT EXISTS {{ MATCH (u){step}(c) }} "
            f"WITH c, count(DISTINCT m) AS score "
            f"RETURN c, score ORDER BY score DESC, c.{_K}, label(c) LIMIT {k}",
            {"key": key},
        )
        if not rows and not self._exists(table, key):
            raise node_not_found(label, key)
        return [(_plain(row[0]), int(row[1])) for row in rows]

    async def _delete_node(self, label: str, key: str) -> bool:
        return await self._run("delete_node", self._sync_delete_node, label, key)

    def _sync_delete_node(self, label: str, key: str) -> bool:
        table = self._node_table(label)
        rows = self._rows(
            f"MATCH (n:{quote(table.name)} {{{_K}: $key}}) DETACH DELETE n RETURN count(*)",
            {"key": key},
        )
        return bool(rows and rows[0][0])

    async def _count_nodes(self, label: str | None) -> int:
        return await self._run("count_nodes", self._sync_count_nodes, label)

    def _sync_count_nodes(self, label: str | None) -> int:
        if label is None:
            if not self._catalog().nodes:
                return 0
            return int(self._rows("MATCH (n) RETURN count(n)")[0][0])
        table = self._catalog().nodes.get(label.lower())
        if table is None:
            raise NotFoundError(
                f"unknown node label {short_repr(label)}: the graph has no such label"
            )
        return int(self._rows(f"MATCH (n:{quote(table.name)}) RETURN count(n)")[0][0])

    async def _clear(self) -> None:
        await self._run("clear", self._sync_clear)

    def _sync_clear(self) -> None:
        self._shared.catalog = None
        catalog = self._catalog()

        def work() -> None:
            for table in [*catalog.rels.values(), *catalog.nodes.values()]:
                self._rows(f"DROP TABLE {quote(table.name)}")

        self._transaction(work)
        self._shared.catalog = None


class _Shared:
    """One Ladybug database of this process and the thread that drives it, shared by
    every store object open on the same file.

    Ladybug does not notice a second ``Database`` on a file inside the process that
    holds it (its file lock only keeps other processes out): both would write the
    file, and the changes of one would be lost. So the store objects on one path share
    the ``Database``, one worker thread (Ladybug objects are not safe to use from
    several threads at once) and the schema cache; each has its own ``Connection``.
    ``:memory:`` databases are private to their store object."""

    _open: ClassVar[dict[str, _Shared]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: str, key: str | None) -> None:
        self.path = path
        self.key = key
        self.worker = Worker("ladybug")
        self.db: Any = None
        self.users = 0
        self.catalog: _Catalog | None = None

    @classmethod
    def acquire(cls, path: str) -> _Shared:
        """The shared database of ``path``, counted as used by one more store."""
        key = None if path == ":memory:" else os.path.realpath(path)
        with cls._lock:
            shared = cls._open.get(key) if key is not None else None
            if shared is None:
                shared = cls(path, key)
                if key is not None:
                    cls._open[key] = shared
            shared.users += 1
        return shared

    def connect(self, timeout: object) -> Any:
        """(worker thread) A new connection, opening the database first if needed."""
        if self.db is None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.db = ladybug.Database(self.path)
            self.catalog = None
        conn = ladybug.Connection(self.db)
        try:
            conn.execute(f"CALL var_length_extend_max_depth={MAX_HOPS}")
            if isinstance(timeout, int | float) and timeout > 0:
                conn.set_query_timeout(int(timeout * 1000))
        except BaseException:
            conn.close()
            raise
        return conn

    def _close_if_unused(self) -> None:
        """(worker thread) Close the database when no store uses it any more."""
        with self._lock:
            unused = self.users == 0
        if unused and self.db is not None:
            db, self.db = self.db, None
            self.catalog = None
            db.close()

    async def release(self) -> None:
        """One store less; the last one closes the database and stops the thread."""
        with self._lock:
            self.users -= 1
        try:
            await self.worker.run(self._close_if_unused)
        finally:
            with self._lock:
                done = self.users == 0
                if done and self.key is not None and self._open.get(self.key) is self:
                    del self._open[self.key]
            if done:
                self.worker.close()
