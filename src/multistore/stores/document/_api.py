"""The document model: collections of JSON documents queried with Mongo-style filters.

:class:`DocumentStore` holds what every backend shares: argument checking, filter,
sort, update and projection parsing (all in the pure modules beside it) and the
public methods. A backend implements the protected hooks (``_insert``, ``_find`` …),
each one statement or one short transaction on its database.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from multistore.errors import DuplicateKeyError, InvalidValueError
from multistore.stores._base import Store
from multistore.stores._limits import check_count, short_repr
from multistore.stores.document._filters import Node, SortKey, parse_filter, parse_sort
from multistore.stores.document._updates import (
    ID,
    apply_update,
    check_collection,
    check_id,
    parse_projection,
    parse_update,
    prepare_document,
    project,
)
from multistore.stores.document._values import Path, parse_path

__all__ = [
    "Document",
    "DocumentStore",
    "Filter",
    "FindPlan",
    "IndexInfo",
    "Projection",
    "Sort",
    "plan_insert_many",
    "plan_update",
]

Document = dict[str, Any]
Filter = Mapping[str, Any]
Sort = Sequence[tuple[str, int]]
Projection = Sequence[str] | Mapping[str, int]


@dataclass(frozen=True)
class IndexInfo:
    """A secondary index on one path of a collection."""

    collection: str
    path: str
    name: str
    """The backend's name for the index (its value index, when it needs several)."""


def plan_insert_many(
    collection: str, docs: Iterable[Mapping[str, Any]]
) -> tuple[str, list[Document], list[str]]:
    """``insert_many``'s checks: the collection, the prepared documents, their ids."""
    name = check_collection(collection)
    if not isinstance(docs, Iterable) or isinstance(docs, str | bytes | Mapping):
        raise InvalidValueError(f"insert_many takes a list of documents, not {type(docs).__name__}")
    prepared = [prepare_document(doc) for doc in docs]
    ids = [str(doc[ID]) for doc in prepared]
    seen: set[str] = set()
    for doc_id in ids:
        if doc_id in seen:
            raise DuplicateKeyError(f"insert_many got _id {short_repr(doc_id)} twice")
        seen.add(doc_id)
    return name, prepared, ids


def plan_update(
    collection: str, id: str, update: Mapping[str, Any]
) -> tuple[str, str, Callable[[Document], Document]]:
    """``update``'s checks: the collection, the id and the change to apply."""
    name, doc_id, ops = check_collection(collection), check_id(id), parse_update(update)
    return name, doc_id, lambda doc: apply_update(doc, ops)


@dataclass(frozen=True)
class FindPlan:
    """``find``'s arguments, checked and parsed."""

    name: str
    node: Node
    sort: tuple[SortKey, ...]
    skip: int
    limit: int | None
    shape: Any

    @classmethod
    def of(
        cls,
        collection: str,
        filter: Filter | None,
        sort: Sort | None,
        skip: int,
        limit: int | None,
        projection: Projection | None,
    ) -> FindPlan:
        name = check_collection(collection)
        node = parse_filter(filter)
        keys = parse_sort(sort)
        check_count(skip, "skip")
        if limit is not None:
            check_count(limit, "limit")
        return cls(name, node, keys, skip, limit, parse_projection(projection))

    def finish(self, docs: list[Document]) -> list[Document]:
        """The documents found, projected."""
        if self.shape is None:
            return docs
        return [project(doc, self.shape) for doc in docs]


class DocumentStore(Store):
    """Collections of JSON documents with ids, Mongo-style filters, sorts and indexes.

    Collections are created on first insert (or by :meth:`create_collection`). Every
    document has a string ``_id``; :meth:`insert` generates one when it is missing.
    """

    model: ClassVar[str] = "document"

    # -- collections -----------------------------------------------------------------

    async def create_collection(self, name: str) -> bool:
        """Create an empty collection; False if it already existed."""
        return await self._create_collection(check_collection(name))

    async def drop_collection(self, name: str) -> bool:
        """Drop a collection with its documents and indexes; False if there was none."""
        return await self._drop_collection(check_collection(name))

    async def collections(self) -> list[str]:
        """The names of all collections, sorted."""
        return sorted(await self._collections())

    # -- documents -------------------------------------------------------------------

    async def insert(self, collection: str, doc: Mapping[str, Any]) -> str:
        """Store a new document; its ``_id`` (the given one or a generated one).

        An ``_id`` that exists already is a :class:`~multistore.errors.DuplicateKeyError`.
        """
        name = check_collection(collection)
        prepared = prepare_document(doc)
        await self._insert(name, [prepared])
        return str(prepared[ID])

    async def insert_many(self, collection: str, docs: Iterable[Mapping[str, Any]]) -> list[str]:
        """Store several new documents at once: all of them, or none on any error."""
        name, prepared, ids = plan_insert_many(collection, docs)
        if prepared:
            await self._insert(name, prepared)
        return ids

    async def get(self, collection: str, id: str) -> Document | None:
        """The document with this id, or None."""
        return await self._get(check_collection(collection), check_id(id))

    async def replace(self, collection: str, id: str, doc: Mapping[str, Any]) -> bool:
        """Replace a whole document (keeping its id); False if there is none with ``id``."""
        doc_id = check_id(id)
        return await self._replace(check_collection(collection), prepare_document(doc, doc_id))

    async def update(self, collection: str, id: str, update: Mapping[str, Any]) -> bool:
        """Apply update operators (``$set $unset $inc $push``) atomically; False if
        there is no document with ``id``. On any error the document is unchanged."""
        return await self._modify(*plan_update(collection, id, update))

    async def delete(self, collection: str, id: str) -> bool:
        """Delete a document; False if there was none with ``id``."""
        return await self._delete(check_collection(collection), check_id(id))

    # -- queries ---------------------------------------------------------------------

    async def find(
        self,
        collection: str,
        filter: Filter | None = None,
        *,
        sort: Sort | None = None,
        skip: int = 0,
        limit: int | None = None,
        projection: Projection | None = None,
    ) -> list[Document]:
        """The documents that match ``filter``, sorted (insertion order without
        ``sort``), after skipping ``skip`` and at most ``limit`` of them."""
        plan = FindPlan.of(collection, filter, sort, skip, limit, projection)
        return plan.finish(await self._find(plan.name, plan.node, plan.sort, plan.skip, plan.limit))

    async def find_one(
        self,
        collection: str,
        filter: Filter | None = None,
        *,
        sort: Sort | None = None,
        projection: Projection | None = None,
    ) -> Document | None:
        """The first document :meth:`find` would return, or None."""
        found = await self.find(collection, filter, sort=sort, limit=1, projection=projection)
        return found[0] if found else None

    async def count(self, collection: str, filter: Filter | None = None) -> int:
        """How many documents match ``filter``."""
        return await self._count(check_collection(collection), parse_filter(filter))

    async def explain(
        self, collection: str, filter: Filter | None = None, *, sort: Sort | None = None
    ) -> str:
        """The database's plan for ``find(collection, filter, sort=sort)``, as text: shows
        whether an index is used (SQLite ``EXPLAIN QUERY PLAN``, PostgreSQL ``EXPLAIN``)."""
        name = check_collection(collection)
        return await self._explain(name, parse_filter(filter), parse_sort(sort))

    # -- indexes ---------------------------------------------------------------------

    async def create_index(self, collection: str, path: str) -> IndexInfo:
        """Index the values at ``path`` (creating the collection if needed); calling it
        again for the same path returns the existing index."""
        name = check_collection(collection)
        return await self._create_index(name, parse_path(path, where="create_index"))

    async def indexes(self, collection: str) -> list[IndexInfo]:
        """The indexes made with :meth:`create_index`, by path."""
        found = await self._indexes(check_collection(collection))
        return sorted(found, key=lambda info: info.path)

    # -- backend hooks ---------------------------------------------------------------

    @abc.abstractmethod
    async def _create_collection(self, name: str) -> bool: ...

    @abc.abstractmethod
    async def _drop_collection(self, name: str) -> bool: ...

    @abc.abstractmethod
    async def _collections(self) -> list[str]: ...

    @abc.abstractmethod
    async def _insert(self, name: str, docs: list[Document]) -> None:
        """Insert checked documents in one transaction, creating the collection."""

    @abc.abstractmethod
    async def _get(self, name: str, doc_id: str) -> Document | None: ...

    @abc.abstractmethod
    async def _replace(self, name: str, doc: Document) -> bool: ...

    @abc.abstractmethod
    async def _modify(self, name: str, doc_id: str, change: Callable[[Document], Document]) -> bool:
        """Read, ``change`` and write back one document atomically (locked meanwhile)."""

    @abc.abstractmethod
    async def _delete(self, name: str, doc_id: str) -> bool: ...

    @abc.abstractmethod
    async def _find(
        self,
        name: str,
        node: Node,
        sort: tuple[SortKey, ...],
        skip: int,
        limit: int | None,
    ) -> list[Document]: ...

    @abc.abstractmethod
    async def _count(self, name: str, node: Node) -> int: ...

    @abc.abstractmethod
    async def _explain(self, name: str, node: Node, sort: tuple[SortKey, ...]) -> str: ...

    @abc.abstractmethod
    async def _create_index(self, name: str, path: Path) -> IndexInfo: ...

    @abc.abstractmethod
    async def _indexes(self, name: str) -> list[IndexInfo]: ...
