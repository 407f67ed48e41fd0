"""The document model: JSON documents in collections, Mongo-style filters.

Backends: :class:`SQLiteDocumentStore` (``sqlite:///path.db``, JSON1) and
:class:`PostgresDocumentStore` (``postgresql://…``, JSONB); see ``docs/stores/document.md``.
They are imported lazily by :func:`multistore.stores.open_store`; import them from their
modules (``multistore.stores.document._sqlite``) only when you need the class itself.
"""

from multistore.stores.document._api import (
    Document,
    DocumentStore,
    Filter,
    IndexInfo,
    Projection,
    Sort,
)

__all__ = ["Document", "DocumentStore", "Filter", "IndexInfo", "Projection", "Sort"]
