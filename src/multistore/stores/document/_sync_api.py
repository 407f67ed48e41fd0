"""The document interface for sync code: the operations and semantics of
:class:`multistore.stores.document.DocumentStore`, as plain methods. The checks and
parsing are the same functions (:func:`plan_insert_many`, :class:`FindPlan` …); a
backend implements the same hooks, without ``async``."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from multistore.stores._sync_base import SyncStore
from multistore.stores.document._api import (
    Document,
    Filter,
    FindPlan,
    IndexInfo,
    Projection,
    Sort,
    plan_insert_many,
    plan_update,
)
from multistore.stores.document._filters import Node, SortKey, parse_filter, parse_sort
from multistore.stores.document._updates import ID, check_collection, check_id, prepare_document
from multistore.stores.document._values import Path, parse_path

__all__ = ["SyncDocumentStore"]


class SyncDocumentStore(SyncStore):
    """Collections of JSON documents, for sync code; see
    :class:`multistore.stores.document.DocumentStore` for what each operation does."""

    model: ClassVar[str] = "document"

    def create_collection(self, name: str) -> bool:
        """Create an empty collection; False if it already existed."""
        return self._create_collection(check_collection(name))

    def drop_collection(self, name: str) -> bool:
        """Drop a collection with its documents and indexes; False if there was none."""
        return self._drop_collection(check_collection(name))

    def collections(self) -> list[str]:
        """The names of all collections, sorted."""
        return sorted(self._collections())

    def insert(self, collection: str, doc: Mapping[str, Any]) -> str:
        """Store a new document; its ``_id`` (the given one or a generated one)."""
        name = check_collection(collection)
        prepared = prepare_document(doc)
        self._insert(name, [prepared])
        return str(prepared[ID])

    def insert_many(self, collection: str, docs: Iterable[Mapping[str, Any]]) -> list[str]:
        """Store several new documents at once: all of them, or none on any error."""
        name, prepared, ids = plan_insert_many(collection, docs)
        if prepared:
            self._insert(name, prepared)
        return ids

    def get(self, collection: str, id: str) -> Document | None:
        """The document with this id, or None."""
        return self._get(check_collection(collection), check_id(id))

    def replace(self, collection: str, id: str, doc: Mapping[str, Any]) -> bool:
        """Replace a whole document (keeping its id); False if there is none with ``id``."""
        doc_id = check_id(id)
        return self._replace(check_collection(collection), prepare_document(doc, doc_id))

    def update(self, collection: str, id: str, update: Mapping[str, Any]) -> bool:
        """Apply update operators atomically; False if there is no document with ``id``."""
        return self._modify(*plan_update(collection, id, update))

    def delete(self, collection: str, id: str) -> bool:
        """Delete a document; False if there was none with ``id``."""
        return self._delete(check_collection(collection), check_id(id))

    def find(
        self,
        collection: str,
        filter: Filter | None = None,
        *,
        sort: Sort | None = None,
        skip: int = 0,
        limit: int | None = None,
        projection: Projection | None = None,
    ) -> list[Document]:
        """The documents that match ``filter``, sorted, skipped and limited."""
        plan = FindPlan.of(collection, filter, sort, skip, limit, projection)
        return plan.finish(self._find(plan.name, plan.node, plan.sort, plan.skip, plan.limit))

    def find_one(
        self,
        collection: str,
        filter: Filter | None = None,
        *,
        sort: Sort | None = None,
        projection: Projection | None = None,
    ) -> Document | None:
        """The first document :meth:`find` would return, or None."""
        found = self.find(collection, filter, sort=sort, limit=1, projection=projection)
        return found[0] if found else None

    def count(self, collection: str, filter: Filter | None = None) -> int:
        """How many documents match ``filter``."""
        return self._count(check_collection(collection), parse_filter(filter))

    def explain(
        self, collection: str, filter: Filter | None = None, *, sort: Sort | None = None
    ) -> str:
        """The database's plan for ``find(collection, filter, sort=sort)``, as text."""
        name = check_collection(collection)
        return self._explain(name, parse_filter(filter), parse_sort(sort))

    def create_index(self, collection: str, path: str) -> IndexInfo:
        """Index the values at ``path`` (creating the collection if needed)."""
        name = check_collection(collection)
        return self._create_index(name, parse_path(path, where="create_index"))

    def indexes(self, collection: str) -> list[IndexInfo]:
        """The indexes made with :meth:`create_index`, by path."""
        return sorted(self._indexes(check_collection(collection)), key=lambda info: info.path)

    # -- backend hooks (as on the async interface) -------------------------------------

    @abc.abstractmethod
    def _create_collection(self, name: str) -> bool: ...

    @abc.abstractmethod
    def _drop_collection(self, name: str) -> bool: ...

    @abc.abstractmethod
    def _collections(self) -> list[str]: ...

    @abc.abstractmethod
    def _insert(self, name: str, docs: list[Document]) -> None: ...

    @abc.abstractmethod
    def _get(self, name: str, doc_id: str) -> Document | None: ...

    @abc.abstractmethod
    def _replace(self, name: str, doc: Document) -> bool: ...

    @abc.abstractmethod
    def _modify(self, name: str, doc_id: str, change: Callable[[Document], Document]) -> bool: ...

    @abc.abstractmethod
    def _delete(self, name: str, doc_id: str) -> bool: ...

    @abc.abstractmethod
    def _find(
        self, name: str, node: Node, sort: tuple[SortKey, ...], skip: int, limit: int | None
    ) -> list[Document]: ...

    @abc.abstractmethod
    def _count(self, name: str, node: Node) -> int: ...

    @abc.abstractmethod
    def _explain(self, name: str, node: Node, sort: tuple[SortKey, ...]) -> str: ...

    @abc.abstractmethod
    def _create_index(self, name: str, path: Path) -> IndexInfo: ...

    @abc.abstractmethod
    def _indexes(self, name: str) -> list[IndexInfo]: ...
