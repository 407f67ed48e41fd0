"""Full-text search: indexes of documents with TEXT, KEYWORD and NUMERIC fields,
queried with words, phrases and exclusions, keyword filters, numeric ranges, facets
and sorting. Backends: tantivy (embedded) and PostgreSQL full text (tsvector + GIN).

See :mod:`multistore.stores.search._api` for the rules every backend follows.
"""

from multistore.stores.search._api import (
    FieldType,
    Hit,
    SearchResult,
    SearchSchema,
    SearchStore,
    SortOrder,
)

__all__ = ["FieldType", "Hit", "SearchResult", "SearchSchema", "SearchStore", "SortOrder"]
