"""The embedded search backend: tantivy, one index directory per search index.

``tantivy:///path/to/dir`` names a directory that holds ``indexes.json`` (each index's
:class:`SearchSchema`) and one tantivy index per search index in a subdirectory of the
same name. ``tantivy:///:memory:`` keeps everything in memory.

Each tantivy index has these fields:

- ``_id`` (raw string, indexed): the document id, for upserts, ``get`` and ``delete``;
- ``_text``: the document's TEXT fields, normalised (see ``_analysis``) and joined,
  analysed by the ``multistore_en`` tokenizer — tantivy's ``en_stem`` chain (simple
  tokenizer, lower-casing, English Snowball stemmer) plus PostgreSQL's English stop
  words and its 2047-byte word limit, so both backends index the same terms;
- ``_source`` (stored bytes): the document as JSON, returned by ``get`` and in hits;
- one raw string fast field per KEYWORD field (filters, facets through a terms
  aggregation) and one float fast field per NUMERIC field (ranges, sorting).

Queries are built from :class:`~multistore.stores.search._analysis.ParsedQuery` with
tantivy's query objects, never with its query parser, so user text is never syntax.
All tantivy calls run on one worker thread; each ``index``/``delete`` commits and
reloads the reader before it returns. A store keeps one writer per index, which holds
tantivy's directory lock: one store object (or process) writes a directory at a time.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, ParamSpec, Self, TypeVar

import tantivy

from multistore.errors import (
    ConflictError,
    InvalidValueError,
    MultistoreError,
    NotFoundError,
    Outcome,
    StoreError,
    StoreUnavailableError,
)
from multistore.stores._files import locked, replace_atomically
from multistore.stores._limits import short_repr
from multistore.stores._worker import Worker
from multistore.stores.search._analysis import MAX_WORD_BYTES, STOP_WORDS, Clause
from multistore.stores.search._api import (
    FieldType,
    Hit,
    SearchResult,
    SearchSchema,
    SearchStore,
    SortOrder,
)
from multistore.stores.search._request import (
    PreparedDoc,
    SearchRequest,
    build_request,
    check_id,
    check_index_name,
    known_index_name,
    prepare_docs,
    sort_facet_counts,
)
from multistore.urls import StoreURL

__all__ = ["TantivySearchStore"]

P = ParamSpec("P")
T = TypeVar("T")

META_FILE: Final = "indexes.json"
#: Held while the metadata is read, changed and written back (see ``_files.locked``).
LOCK_FILE: Final = "indexes.lock"
TOKENIZER: Final = "multistore_en"
_WRITER_HEAP: Final = 20_000_000
#: tantivy's terms aggregation refuses more buckets than this; past it, facets are
#: counted by walking the term dictionary instead.
_AGG_BUCKETS: Final = 65_000


def _analyzer() -> tantivy.TextAnalyzer:
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(MAX_WORD_BYTES))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.custom_stopword(sorted(STOP_WORDS)))
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


def _tantivy_schema(schema: SearchSchema) -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("_id", tokenizer_name="raw", index_option="basic")
    builder.add_text_field("_text", tokenizer_name=TOKENIZER, index_option="position")
    builder.add_bytes_field("_source", stored=True)
    for name, kind in schema.fields.items():
        if kind is FieldType.KEYWORD:
            builder.add_text_field(name, tokenizer_name="raw", fast=True, index_option="basic")
        elif kind is FieldType.NUMERIC:
            builder.add_float_field(name, indexed=True, fast=True)
    return builder.build()


@dataclass
class _Index:
    schema: SearchSchema
    index: tantivy.Index
    tschema: tantivy.Schema
    analyzer: tantivy.TextAnalyzer
    writer: tantivy.IndexWriter | None = None

    def get_writer(self, name: str) -> tantivy.IndexWriter:
        if self.writer is None:
            try:
                self.writer = self.index.writer(heap_size=_WRITER_HEAP, num_threads=1)
            except ValueError as exc:
                raise StoreUnavailableError(
                    f"cannot write search index {short_repr(name)}: {exc} (is another store object "
                    "or process writing the same directory?)",
                    outcome=Outcome.DEFINITE,
                ) from exc
        return self.writer

    def release(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.wait_merging_threads()


@contextlib.contextmanager
def _engine_errors(what: str) -> Iterator[None]:
    """Wrap tantivy's exceptions (ValueError, OSError …) in StoreError."""
    try:
        yield
    except MultistoreError:
        raise
    except Exception as exc:
        raise StoreError(f"tantivy failed to {what}: {exc}") from exc


class TantivySearchStore(SearchStore):
    """Search indexes in a local directory, with tantivy."""

    def __init__(self, url: StoreURL, root: Path | None, worker: Worker) -> None:
        self.url = url
        self._root = root
        self._worker = worker
        self._indexes: dict[str, _Index] = {}
        self._closed = False
        self._lock_timeout = url.float_option("timeout", 10.0)

    @classmethod
    async def open(cls, url: StoreURL) -> Self:
        root = None if url.path == ":memory:" else Path(url.path)
        store = cls(url, root, Worker("tantivy"))
        try:
            await store._worker.run(store._load)
        except BaseException:
            store._worker.close()
            raise
        return store

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(RuntimeError):
            await self._worker.run(self._release_all)
        self._worker.close()

    @property
    def native(self) -> dict[str, tantivy.Index]:
        """The tantivy ``Index`` of each search index, by name. Register the
        ``multistore_en`` analyzer before parsing queries on ``_text`` yourself."""
        return {name: ix.index for name, ix in self._indexes.items()}

    async def _call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` on the worker thread, which owns every tantivy object."""
        if self._closed:
            raise StoreError("the search store is closed", outcome=Outcome.DEFINITE)
        return await self._worker.run(fn, *args, **kwargs)

    # -- metadata and opening (worker thread) -------------------------------------------

    def _load(self) -> None:
        if self._root is None:
            return
        try:
            self._root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailableError(
                f"cannot create search directory {self._root}: {exc}"
            ) from exc
        for name, schema in self._read_meta().items():
            if name not in self._indexes:
                self._indexes[name] = self._open_index(name, schema, create=False)

    def _read_meta(self) -> dict[str, SearchSchema]:
        assert self._root is not None
        path = self._root / META_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return {name: SearchSchema.from_dict(entry) for name, entry in data["indexes"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, MultistoreError) as exc:
            raise StoreError(f"cannot read search metadata {path}: {exc}") from exc

    @contextlib.contextmanager
    def _meta_lock(self, what: str) -> Iterator[None]:
        """Serialise a read-modify-write of the metadata with every other store object
        and process on this directory."""
        assert self._root is not None
        with locked(self._root / LOCK_FILE, timeout=self._lock_timeout, what=what):
            yield

    def _write_meta(self, schemas: Mapping[str, SearchSchema]) -> None:
        """Replace the metadata file with ``schemas`` (call with the lock held)."""
        assert self._root is not None
        path = self._root / META_FILE
        data = {
            "format": 1,
            "indexes": {name: schema.to_dict() for name, schema in sorted(schemas.items())},
        }
        try:
            replace_atomically(path, json.dumps(data, indent=2).encode("utf-8"))
        except OSError as exc:
            raise StoreError(
                f"cannot write search metadata {path}: {exc}", outcome=Outcome.DEFINITE
            ) from exc

    def _open_index(self, name: str, schema: SearchSchema, *, create: bool) -> _Index:
        tschema = _tantivy_schema(schema)
        analyzer = _analyzer()
        with _engine_errors(f"open search index {short_repr(name)}"):
            if self._root is None:
                index = tantivy.Index(tschema)
            else:
                directory = self._root / name
                if create:
                    shutil.rmtree(directory, ignore_errors=True)  # leftover of a crash
                    directory.mkdir()
                    index = tantivy.Index(tschema, path=str(directory), reuse=False)
                else:
                    index = tantivy.Index.open(str(directory))
            index.register_tokenizer(TOKENIZER, analyzer)
        return _Index(schema, index, tschema, analyzer)

    def _get(self, name: str) -> _Index:
        known_index_name(name)
        ix = self._indexes.get(name)
        if ix is None and self._root is not None:
            # Another store object on this directory may have created it since.
            schema = self._read_meta().get(name)
            if schema is not None:
                ix = self._indexes[name] = self._open_index(name, schema, create=False)
        if ix is None:
            raise NotFoundError(f"no search index named {short_repr(name)}")
        return ix

    def _release_all(self) -> None:
        for ix in self._indexes.values():
            ix.release()

    # -- index management ---------------------------------------------------------------

    async def create_index(self, name: str, schema: SearchSchema) -> None:
        check_index_name(name)
        if not isinstance(schema, SearchSchema):
            raise InvalidValueError("create_index needs a SearchSchema")
        await self._call(self._create_sync, name, schema)

    def _create_sync(self, name: str, schema: SearchSchema) -> None:
        if self._root is None:
            existing = self._indexes.get(name)
            if existing is None:
                self._indexes[name] = self._open_index(name, schema, create=True)
            elif existing.schema != schema:
                raise _schema_conflict(name, existing.schema)
            return
        with self._meta_lock(f"create search index {short_repr(name)}"):
            schemas = self._read_meta()
            recorded = schemas.get(name)
            if recorded is not None:
                if recorded != schema:
                    raise _schema_conflict(name, recorded)
                self._get(name)
                return
            self._forget(name)  # dropped by another store object meanwhile
            ix = self._open_index(name, schema, create=True)
            try:
                self._write_meta({**schemas, name: schema})
            except BaseException:
                ix.release()
                shutil.rmtree(self._root / name, ignore_errors=True)
                raise
            self._indexes[name] = ix

    async def drop_index(self, name: str) -> None:
        await self._call(self._drop_sync, name)

    def _drop_sync(self, name: str) -> None:
        if self._root is None:
            ix = self._get(name)
            ix.release()
            del self._indexes[name]
            return
        with self._meta_lock(f"drop search index {short_repr(name)}"):
            schemas = self._read_meta()
            if name not in schemas:
                self._forget(name)
                raise NotFoundError(f"no search index named {short_repr(name)}")
            ix = self._get(name)
            # Taking the writer fails while another store object or process writes the
            # index: the drop is refused rather than pulling the files from under it.
            ix.get_writer(name)
            del schemas[name]
            self._write_meta(schemas)
            self._forget(name)
            shutil.rmtree(self._root / name, ignore_errors=True)

    def _forget(self, name: str) -> None:
        """Drop the cached handle on ``name`` (releasing its writer), if any."""
        ix = self._indexes.pop(name, None)
        if ix is not None:
            ix.release()

    async def indexes(self) -> list[str]:
        return await self._call(self._names_sync)

    def _names_sync(self) -> list[str]:
        if self._root is not None:
            recorded = self._read_meta()
            for name in [n for n in self._indexes if n not in recorded]:
                self._forget(name)  # dropped by another store object or process
            for name in recorded:
                self._get(name)
        return sorted(self._indexes)

    async def schema(self, name: str) -> SearchSchema:
        ix = await self._call(self._get, name)
        return ix.schema

    # -- documents ----------------------------------------------------------------------

    async def index(self, name: str, docs: Sequence[Mapping[str, Any]]) -> None:
        await self._call(self._index_sync, name, docs)

    def _index_sync(self, name: str, docs: Sequence[Mapping[str, Any]]) -> None:
        ix = self._get(name)
        prepared = prepare_docs(ix.schema, name, docs)
        if not prepared:
            return
        writer = ix.get_writer(name)
        with _engine_errors(f"index documents into {short_repr(name)}"):
            try:
                for item in prepared:
                    writer.delete_documents_by_term("_id", item.id)
                    writer.add_document(_document(item))
                writer.commit()
            except BaseException:
                with contextlib.suppress(Exception):
                    writer.rollback()
                raise
            ix.index.reload()

    async def delete(self, name: str, id: str) -> bool:
        return await self._call(self._delete_sync, name, id)

    def _delete_sync(self, name: str, id: str) -> bool:
        ix = self._get(name)
        check_id(id, name)
        with _engine_errors(f"delete from {short_repr(name)}"):
            found = _count(ix.index.searcher().search(self._id_query(ix, id), 1)) > 0
            if not found:
                return False
            writer = ix.get_writer(name)
            writer.delete_documents_by_term("_id", id)
            writer.commit()
            ix.index.reload()
        return True

    async def get(self, name: str, id: str) -> dict[str, Any] | None:
        return await self._call(self._get_sync, name, id)

    def _get_sync(self, name: str, id: str) -> dict[str, Any] | None:
        ix = self._get(name)
        check_id(id, name)
        with _engine_errors(f"read from {short_repr(name)}"):
            searcher = ix.index.searcher()
            result = searcher.search(self._id_query(ix, id), 1)
            if not result.hits:
                return None
            return _source(ix.schema, searcher, result.hits[0][1])

    @staticmethod
    def _id_query(ix: _Index, id: str) -> tantivy.Query:
        return tantivy.Query.term_query(ix.tschema, "_id", id)

    # -- search -------------------------------------------------------------------------

    async def search(
        self,
        name: str,
        query: str = "",
        *,
        filters: Mapping[str, str | Sequence[str]] | None = None,
        ranges: Mapping[str, tuple[float | None, float | None]] | None = None,
        facets: Sequence[str] | None = None,
        sort: tuple[str, SortOrder] | None = None,
        offset: int = 0,
        limit: int = 10,
    ) -> SearchResult:
        def run() -> SearchResult:
            ix = self._get(name)
            request = build_request(
                ix.schema, name, query, filters, ranges, facets, sort, offset, limit
            )
            with _engine_errors(f"search {short_repr(name)}"):
                return self._search_sync(ix, request)

        return await self._call(run)

    def _search_sync(self, ix: _Index, request: SearchRequest) -> SearchResult:
        searcher = ix.index.searcher()
        query = self._compile(ix, request)
        kwargs: dict[str, Any] = {"count": True, "offset": request.offset}
        if request.sort is not None:
            field, descending = request.sort
            kwargs["order_by_field"] = field
            kwargs["order"] = tantivy.Order.Desc if descending else tantivy.Order.Asc
        # tantivy's collector panics on limit 0: fetch one and drop it.
        result = searcher.search(query, max(request.limit, 1), **kwargs)
        hits = [
            Hit(
                id=str(doc[ix.schema.id_field]),
                score=float(key) if request.scored else 0.0,
                doc=doc,
            )
            for key, address in result.hits[: request.limit]
            for doc in [_source(ix.schema, searcher, address)]
        ]
        facets = {field: self._facet(ix, searcher, query, field) for field in request.facets}
        return SearchResult(total=_count(result), hits=hits, facets=facets)

    def _compile(self, ix: _Index, request: SearchRequest) -> tantivy.Query:
        Occur, Query = tantivy.Occur, tantivy.Query
        parsed = request.query
        if parsed.matches_none:
            return Query.empty_query()
        parts: list[tuple[Any, tantivy.Query]] = []
        for clause in parsed.positive:
            parts.append((Occur.Must, self._clause(ix, clause)))
        for clause in parsed.negative:
            parts.append((Occur.MustNot, self._clause(ix, clause)))
        if not parsed.positive:
            parts.append((Occur.Must, Query.all_query()))
        for field, values in request.filters:
            if not values:
                condition = Query.empty_query()
            elif len(values) == 1:
                condition = Query.term_query(ix.tschema, field, values[0])
            else:
                condition = Query.term_set_query(ix.tschema, field, list(values))
            parts.append((Occur.Must, Query.const_score_query(condition, 0.0)))
        for field, low, high in request.ranges:
            if low is None and high is None:
                condition = Query.exists_query(field)
            else:
                condition = Query.range_query(ix.tschema, field, tantivy.FieldType.Float, low, high)
            parts.append((Occur.Must, Query.const_score_query(condition, 0.0)))
        return Query.boolean_query(parts)

    @staticmethod
    def _clause(ix: _Index, clause: Clause) -> tantivy.Query:
        terms = [(pos, token) for pos, word in clause.terms for token in ix.analyzer.analyze(word)]
        if not terms:
            return tantivy.Query.empty_query()
        if len(terms) == 1:
            return tantivy.Query.term_query(ix.tschema, "_text", terms[0][1])
        first = terms[0][0]
        return tantivy.Query.phrase_query(
            ix.tschema, "_text", [(pos - first, token) for pos, token in terms]
        )

    @staticmethod
    def _facet(
        ix: _Index, searcher: tantivy.Searcher, query: tantivy.Query, field: str
    ) -> dict[str, int]:
        spec = {
            "f": {"terms": {"field": field, "size": _AGG_BUCKETS, "segment_size": _AGG_BUCKETS}}
        }
        try:
            buckets = searcher.aggregate(query, spec)["f"]["buckets"]
            counts = {str(b["key"]): int(b["doc_count"]) for b in buckets}
            if len(counts) < _AGG_BUCKETS:
                return sort_facet_counts(counts)
        except ValueError:
            pass  # more distinct values than an aggregation may hold
        pairs = searcher.terms_with_prefix(field, "", filter_query=query)
        return sort_facet_counts({str(term): int(count) for term, count in pairs if count})


def _schema_conflict(name: str, schema: SearchSchema) -> ConflictError:
    return ConflictError(
        f"search index {short_repr(name)} exists with another schema "
        f"({schema.to_dict()}); drop it first to change it"
    )


def _count(result: tantivy.SearchResult) -> int:
    """The number of matches (the stubs of tantivy 0.2x omit ``count``)."""
    return int(result.count)  # type: ignore[attr-defined]


def _document(item: PreparedDoc) -> tantivy.Document:
    doc = tantivy.Document()
    doc.add_text("_id", item.id)
    if item.text:
        doc.add_text("_text", item.text)
    doc.add_bytes("_source", json.dumps(item.doc, ensure_ascii=False).encode("utf-8"))
    for name, value in item.keywords.items():
        if value is not None:
            doc.add_text(name, value)
    for name, number in item.numbers.items():
        if number is not None:
            doc.add_float(name, number)
    return doc


def _source(schema: SearchSchema, searcher: tantivy.Searcher, address: Any) -> dict[str, Any]:
    raw = searcher.doc(address)["_source"][0]
    doc: dict[str, Any] = json.loads(bytes(raw))
    for name in schema.names(FieldType.NUMERIC):
        if doc.get(name) is not None:
            doc[name] = float(doc[name])
    return doc
