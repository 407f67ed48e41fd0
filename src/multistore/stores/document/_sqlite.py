"""The embedded document backend: SQLite with its JSON1 functions, for async and
sync code.

The layout and the SQL are in :mod:`multistore.stores.document._sqlite_steps`; this
module holds the two thin drivers that run each hook's step:
:class:`SQLiteDocumentStore` on its :class:`~multistore.stores._worker.Worker`
thread, :class:`SyncSQLiteDocumentStore` on the calling thread (under the store's
lock).

URL: ``sqlite:///path.db`` (``sqlite:///:memory:`` for a private in-memory store).
Options: ``timeout`` (busy timeout, default 5 s), ``journal_mode`` (default
``wal``), ``synchronous`` (default ``normal``), ``create`` (default true; false
refuses to create a missing file), ``prefix`` (prepended to table names).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Self

from multistore.errors import MultistoreError
from multistore.stores._sqlite_common import SQLiteStore, SyncSQLiteStore, connect, start
from multistore.stores._worker import Worker
from multistore.stores.document._api import Document, DocumentStore, IndexInfo
from multistore.stores.document._filters import Node, SortKey
from multistore.stores.document._sqlite_steps import DocumentSteps, check_prefix, document_error
from multistore.stores.document._sync_api import SyncDocumentStore
from multistore.stores.document._values import Path
from multistore.urls import StoreURL

__all__ = ["SQLiteDocumentStore", "SyncSQLiteDocumentStore"]

_WHAT = "a document store"


class SQLiteDocumentStore(SQLiteStore, DocumentStore):
    """Document store in one SQLite file (``sqlite:///path.db``), for async code."""

    _noun = "document store"

    def __init__(self, url: StoreURL, worker: Worker, conn: sqlite3.Connection) -> None:
        super().__init__(url, worker, conn)
        self._steps = DocumentSteps(check_prefix(url))

    @classmethod
    async def open(cls, url: StoreURL) -> Self:
        steps = DocumentSteps(check_prefix(url))
        worker, conn = await start("document-sqlite", connect, url, _WHAT, steps.prepare)
        return cls(url, worker, conn)

    def _error(self, exc: sqlite3.Error, subject: str | None) -> MultistoreError:
        return document_error(self.url, exc, subject)

    async def _create_collection(self, name: str) -> bool:
        return await self._call_on(name, self._steps.create_collection(name))

    async def _drop_collection(self, name: str) -> bool:
        return await self._call_on(name, self._steps.drop_collection(name))

    async def _collections(self) -> list[str]:
        return await self._call(self._steps.collections())

    async def _insert(self, name: str, docs: list[Document]) -> None:
        await self._call_on(name, self._steps.insert(name, docs))

    async def _get(self, name: str, doc_id: str) -> Document | None:
        return await self._call_on(name, self._steps.get(name, doc_id))

    async def _replace(self, name: str, doc: Document) -> bool:
        return await self._call_on(name, self._steps.replace(name, doc))

    async def _modify(self, name: str, doc_id: str, change: Callable[[Document], Document]) -> bool:
        return await self._call_on(name, self._steps.modify(name, doc_id, change))

    async def _delete(self, name: str, doc_id: str) -> bool:
        return await self._call_on(name, self._steps.delete(name, doc_id))

    async def _find(
        self, name: str, node: Node, sort: tuple[SortKey, ...], skip: int, limit: int | None
    ) -> list[Document]:
        return await self._call_on(name, self._steps.find(name, node, sort, skip, limit))

    async def _explain(self, name: str, node: Node, sort: tuple[SortKey, ...]) -> str:
        return await self._call_on(name, self._steps.explain(name, node, sort))

    async def _count(self, name: str, node: Node) -> int:
        return await self._call_on(name, self._steps.count(name, node))

    async def _create_index(self, name: str, path: Path) -> IndexInfo:
        return await self._call_on(name, self._steps.create_index(name, path))

    async def _indexes(self, name: str) -> list[IndexInfo]:
        return await self._call_on(name, self._steps.indexes(name))


class SyncSQLiteDocumentStore(SyncSQLiteStore, SyncDocumentStore):
    """Document store in one SQLite file, for sync code: each call runs on the
    calling thread."""

    _noun = "document store"

    def __init__(self, url: StoreURL, conn: sqlite3.Connection) -> None:
        super().__init__(url, conn)
        self._steps = DocumentSteps(check_prefix(url))

    @classmethod
    def open(cls, url: StoreURL) -> Self:
        steps = DocumentSteps(check_prefix(url))
        return cls(url, connect(url, _WHAT, steps.prepare, check_same_thread=False))

    def _error(self, exc: sqlite3.Error, subject: str | None) -> MultistoreError:
        return document_error(self.url, exc, subject)

    def _create_collection(self, name: str) -> bool:
        return self._call_on(name, self._steps.create_collection(name))

    def _drop_collection(self, name: str) -> bool:
        return self._call_on(name, self._steps.drop_collection(name))

    def _collections(self) -> list[str]:
        return self._call(self._steps.collections())

    def _insert(self, name: str, docs: list[Document]) -> None:
        self._call_on(name, self._steps.insert(name, docs))

    def _get(self, name: str, doc_id: str) -> Document | None:
        return self._call_on(name, self._steps.get(name, doc_id))

    def _replace(self, name: str, doc: Document) -> bool:
        return self._call_on(name, self._steps.replace(name, doc))

    def _modify(self, name: str, doc_id: str, change: Callable[[Document], Document]) -> bool:
        return self._call_on(name, self._steps.modify(name, doc_id, change))

    def _delete(self, name: str, doc_id: str) -> bool:
        return self._call_on(name, self._steps.delete(name, doc_id))

    def _find(
        self, name: str, node: Node, sort: tuple[SortKey, ...], skip: int, limit: int | None
    ) -> list[Document]:
        return self._call_on(name, self._steps.find(name, node, sort, skip, limit))

    def _explain(self, name: str, node: Node, sort: tuple[SortKey, ...]) -> str:
        return self._call_on(name, self._steps.explain(name, node, sort))

    def _count(self, name: str, node: Node) -> int:
        return self._call_on(name, self._steps.count(name, node))

    def _create_index(self, name: str, path: Path) -> IndexInfo:
        return self._call_on(name, self._steps.create_index(name, path))

    def _indexes(self, name: str) -> list[IndexInfo]:
        return self._call_on(name, self._steps.indexes(name))
