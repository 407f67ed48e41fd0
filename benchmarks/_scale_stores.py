"""The store cases of ``multistore bench scale``, on the embedded backends.

Each side holds ``size`` items in files of its own. The raw side is what a user who
hand-writes it would run on the same engine: ``sqlite3`` with a plain table,
``tantivy``'s Python binding, ``ladybug``'s ``Connection``, ``duckdb``. The operation
reads spread keys (see :func:`benchmarks._scale_types.keys`), the same on both sides.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import ladybug
import tantivy

from benchmarks._scale_types import Case, Prepared, clone_rows, keys, raw_sqlite
from multistore.stores import open_store
from multistore.stores.document import DocumentStore
from multistore.stores.graph import GraphStore
from multistore.stores.kv import KeyValueStore
from multistore.stores.search import FieldType, SearchSchema, SearchStore
from multistore.stores.timeseries import Point, TimeSeriesStore
from multistore.stores.widecolumn import ClusteringColumn, TableSchema, WideColumnStore

VALUE = b'{"user_id":123,"username":"alice","roles":["user","premium"]}'
BATCH = 10_000


def _batches(size: int) -> list[range]:
    return [range(i, min(i + BATCH, size)) for i in range(0, size, BATCH)]


# -- key-value: get one key of N -------------------------------------------------------


async def kv_ours(size: int, folder: Path) -> Prepared:
    path = folder / "kv-ours.db"
    store = await open_store(f"sqlite:///{path}", model="kv")
    assert isinstance(store, KeyValueStore)
    await store.set("k0", VALUE)
    loader = raw_sqlite(path)
    clone_rows(loader, "multistore_kv", "key = 'k0'", size - 1, {"key": "'k' || i"})
    loader.close()
    key = keys("k", size)
    return Prepared(lambda: store.get(key()), store.close)


async def kv_raw(size: int, folder: Path) -> Prepared:
    conn = raw_sqlite(folder / "kv-raw.db")
    conn.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID")
    for part in _batches(size):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO kv VALUES (?, ?)", ((f"k{i}", VALUE) for i in part))
        conn.execute("COMMIT")
    key = keys("k", size)

    def get() -> bytes:
        return bytes(conn.execute("SELECT value FROM kv WHERE key = ?", (key(),)).fetchone()[0])

    async def close() -> None:
        conn.close()

    return Prepared(get, close)


# -- document: find by a field, with and without an index --------------------------------

CATEGORIES = ("electronics", "clothing", "books", "toys")


def _doc(i: int) -> dict[str, Any]:
    return {
        "_id": f"d{i}",
        "sku": f"s{i}",
        "code": f"s{i}",
        "category": CATEGORIES[i % 4],
        "price": (i * 37) % 2000,
        "specs": {"ram": "16GB", "storage": "512GB SSD"},
    }


async def _documents(size: int, folder: Path) -> DocumentStore:
    store = await open_store(f"sqlite:///{folder / 'doc-ours.db'}", model="document")
    assert isinstance(store, DocumentStore)
    for part in _batches(size):
        await store.insert_many("products", (_doc(i) for i in part))
    await store.create_index("products", "sku")
    return store


def _raw_documents(size: int, folder: Path) -> Any:
    conn = raw_sqlite(folder / "doc-raw.db")
    conn.execute("CREATE TABLE products (id TEXT PRIMARY KEY, doc TEXT NOT NULL)")
    for part in _batches(size):
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO products VALUES (?, ?)",
            ((f"d{i}", json.dumps(_doc(i))) for i in part),
        )
        conn.execute("COMMIT")
    conn.execute("CREATE INDEX products_sku ON products (json_extract(doc, '$.sku'))")
    return conn


def _find_raw(field: str) -> Any:
    async def prepare(size: int, folder: Path) -> Prepared:
        conn = _raw_documents(size, folder)
        key = keys("s", size)
        sql = f"SELECT doc FROM products WHERE json_extract(doc, '$.{field}') = ? LIMIT 10"

        def find() -> list[Any]:
            return [json.loads(r[0]) for r in conn.execute(sql, (key(),)).fetchall()]

        async def close() -> None:
            conn.close()

        return Prepared(find, close)

    return prepare


def _find_ours(field: str) -> Any:
    async def prepare(size: int, folder: Path) -> Prepared:
        store = await _documents(size, folder)
        key = keys("s", size)
        return Prepared(lambda: store.find("products", {field: key()}, limit=10), store.close)

    return prepare


# -- search: top 10 of N documents ------------------------------------------------------

WORDS = [f"w{n}" for n in range(1000)]
SEARCH_SCHEMA = SearchSchema({"title": FieldType.TEXT, "category": FieldType.KEYWORD})


def _article(i: int) -> dict[str, Any]:
    # Five words of a thousand, spread: each word is in about 0.5% of the documents.
    words = " ".join(WORDS[(i * p) % 1000] for p in (1, 7, 13, 31, 61))
    return {"id": f"a{i}", "title": f"article {words}", "category": CATEGORIES[i % 4]}


def _query_words() -> Any:
    return keys("w", 1000, count=64)


async def search_ours(size: int, folder: Path) -> Prepared:
    store = await open_store(f"tantivy:///{folder / 'search-ours'}", model="search")
    assert isinstance(store, SearchStore)
    await store.create_index("articles", SEARCH_SCHEMA)
    for part in _batches(size):
        await store.index("articles", [_article(i) for i in part])
    word = _query_words()
    return Prepared(lambda: store.search("articles", word(), limit=10), store.close)


async def search_raw(size: int, folder: Path) -> Prepared:
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("id", tokenizer_name="raw", index_option="basic")
    builder.add_text_field("title", tokenizer_name="en_stem")
    builder.add_text_field("category", tokenizer_name="raw", fast=True, index_option="basic")
    builder.add_bytes_field("source", stored=True)
    schema = builder.build()
    directory = folder / "search-raw"
    directory.mkdir()
    index = tantivy.Index(schema, path=str(directory))
    writer = index.writer(heap_size=50_000_000, num_threads=1)
    for part in _batches(size):
        for i in part:
            doc = _article(i)
            out = tantivy.Document()
            out.add_text("id", doc["id"])
            out.add_text("title", doc["title"])
            out.add_text("category", doc["category"])
            out.add_bytes("source", json.dumps(doc).encode())
            writer.add_document(out)
        writer.commit()
    writer.wait_merging_threads()
    index.reload()
    word = _query_words()

    def search() -> list[Any]:
        searcher = index.searcher()
        query = index.parse_query(word(), ["title"])
        hits = searcher.search(query, 10).hits
        return [json.loads(bytes(searcher.doc(a)["source"][0])) for _, a in hits]

    async def close() -> None:
        pass

    return Prepared(search, close)


# -- graph: friends of friends in a graph of N users -------------------------------------

FOLLOWS = 5


def _graph_csv(size: int, folder: Path, name: str) -> tuple[Path, Path]:
    nodes, edges = folder / f"{name}-users.csv", folder / f"{name}-follows.csv"
    with nodes.open("w") as out:
        out.writelines(f"u{i},{i % 90}\n" for i in range(size))
    with edges.open("w") as out:
        for i in range(size):
            out.writelines(f"u{i},u{(i * 31 + k * 977 + 1) % size}\n" for k in range(FOLLOWS))
    return nodes, edges


async def graph_ours(size: int, folder: Path) -> Prepared:
    store = await open_store(f"ladybug:///{folder / 'graph-ours.lbdb'}", model="graph")
    assert isinstance(store, GraphStore)
    # Through the API once, so the store makes its tables; then COPY, the bulk load.
    await store.create_node("User", "seed", {"age": 1})
    await store.create_relationship("User", "seed", "FOLLOWS", "User", "seed")
    await store.query("MATCH (n:`User`) DETACH DELETE n")
    nodes, edges = _graph_csv(size, folder, "ours")
    await store.query(f"COPY `User` FROM '{nodes}'")
    await store.query(f"COPY `FOLLOWS` FROM '{edges}'")
    user = keys("u", size)
    return Prepared(lambda: store.friends_of_friends("User", user(), "FOLLOWS"), store.close)


async def graph_raw(size: int, folder: Path) -> Prepared:
    db = ladybug.Database(str(folder / "graph-raw.lbdb"))
    conn = ladybug.Connection(db)
    conn.execute("CREATE NODE TABLE User(key STRING PRIMARY KEY, age INT64)")
    conn.execute("CREATE REL TABLE FOLLOWS(FROM User TO User)")
    nodes, edges = _graph_csv(size, folder, "raw")
    conn.execute(f"COPY User FROM '{nodes}'")
    conn.execute(f"COPY FOLLOWS FROM '{edges}'")
    user = keys("u", size)
    fof = "MATCH (u:User {key: $key})-[:FOLLOWS]->()-[:FOLLOWS]->(f) WHERE f <> u RETURN DISTINCT f"

    def friends() -> object:
        return conn.execute(fof, {"key": user()}).get_all()  # type: ignore[union-attr]

    async def close() -> None:
        conn.close()
        db.close()

    return Prepared(friends, close)


# -- time series: a windowed mean over the last hour of N points -------------------------

T0 = datetime(2024, 1, 15, tzinfo=UTC)


def _window(size: int) -> tuple[datetime, datetime]:
    end = T0 + timedelta(seconds=size)
    return max(T0, end - timedelta(hours=1)), end


async def ts_ours(size: int, folder: Path) -> Prepared:
    store = await open_store(f"duckdb:///{folder / 'ts-ours.duckdb'}", model="timeseries")
    assert isinstance(store, TimeSeriesStore)
    for part in _batches(size):
        await store.write_many(
            Point(
                "http_requests",
                {"endpoint": "/api/users"},
                {"response_time": 40.0 + i % 17},
                T0 + timedelta(seconds=i),
            )
            for i in part
        )
    start, end = _window(size)
    return Prepared(
        lambda: store.aggregate(
            "http_requests",
            "response_time",
            fn="mean",
            every=timedelta(minutes=1),
            start=start,
            end=end,
        ),
        store.close,
    )


async def ts_raw(size: int, folder: Path) -> Prepared:
    conn = duckdb.connect(str(folder / "ts-raw.duckdb"))
    conn.execute("CREATE TABLE http_requests (endpoint VARCHAR, time TIMESTAMP, rt DOUBLE)")
    conn.execute(
        "INSERT INTO http_requests SELECT '/api/users', "
        "TIMESTAMP '2024-01-15 00:00:00' + to_seconds(i), 40.0 + i % 17 FROM range(?) t(i)",
        [size],
    )
    start, end = (t.replace(tzinfo=None) for t in _window(size))
    sql = (
        "SELECT time_bucket(INTERVAL 1 MINUTE, time) AS w, avg(rt) FROM http_requests "
        "WHERE time >= ? AND time < ? GROUP BY w ORDER BY w"
    )

    def aggregate() -> list[Any]:
        return conn.execute(sql, [start, end]).fetchall()

    async def close() -> None:
        conn.close()

    return Prepared(aggregate, close)


# -- wide column: scan one partition of 100 rows, of N rows ------------------------------

PARTITION = 100
WC_SCHEMA = TableSchema(
    "readings",
    partition_key=("sensor_id",),
    clustering=(ClusteringColumn("ts", "desc"),),
    columns={"sensor_id": "text", "ts": "timestamp", "temperature": "float"},
)


async def wc_ours(size: int, folder: Path) -> Prepared:
    store = await open_store(f"sqlite:///{folder / 'wc-ours.db'}", model="widecolumn")
    assert isinstance(store, WideColumnStore)
    await store.create_table(WC_SCHEMA)
    for part in _batches(size):
        await store.upsert_many(
            "readings",
            [
                {
                    "sensor_id": f"s{i // PARTITION}",
                    "ts": T0 + timedelta(minutes=i % PARTITION),
                    "temperature": 21.5,
                }
                for i in part
            ],
        )
    sensor = keys("s", max(size // PARTITION, 1))
    return Prepared(
        lambda: store.select("readings", {"sensor_id": sensor()}, limit=PARTITION), store.close
    )


async def wc_raw(size: int, folder: Path) -> Prepared:
    conn = raw_sqlite(folder / "wc-raw.db")
    conn.execute(
        "CREATE TABLE readings (sensor_id TEXT NOT NULL, ts INTEGER NOT NULL, temperature REAL, "
        "PRIMARY KEY (sensor_id, ts DESC)) WITHOUT ROWID, STRICT"
    )
    for part in _batches(size):
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO readings VALUES (?, ?, 21.5)",
            ((f"s{i // PARTITION}", (i % PARTITION) * 60_000_000) for i in part),
        )
        conn.execute("COMMIT")
    sensor = keys("s", max(size // PARTITION, 1))
    sql = "SELECT sensor_id, ts, temperature FROM readings WHERE sensor_id = ? ORDER BY ts DESC"

    def scan() -> list[Any]:
        return conn.execute(sql + " LIMIT ?", (sensor(), PARTITION)).fetchall()

    async def close() -> None:
        conn.close()

    return Prepared(scan, close)


CASES = [
    Case("kv-get", "kv get one key, sqlite", "keys", "sqlite3 SELECT by key", kv_ours, kv_raw),
    Case(
        "doc-find-indexed",
        "document find by an indexed field, sqlite",
        "documents",
        "sqlite3 SELECT, expression index",
        _find_ours("sku"),
        _find_raw("sku"),
    ),
    Case(
        "doc-find-scan",
        "document find by a field without index, sqlite",
        "documents",
        "sqlite3 SELECT, table scan",
        _find_ours("code"),
        _find_raw("code"),
    ),
    Case(
        "search-top10",
        "search top 10 for one word, tantivy",
        "documents",
        "tantivy",
        search_ours,
        search_raw,
    ),
    Case(
        "graph-fof",
        f"graph friends of friends ({FOLLOWS} follows each), ladybug",
        "users",
        "ladybug Connection.execute",
        graph_ours,
        graph_raw,
    ),
    Case(
        "ts-window",
        "timeseries mean per minute over the last hour, duckdb",
        "points (one a second)",
        "duckdb time_bucket GROUP BY",
        ts_ours,
        ts_raw,
    ),
    Case(
        "wc-partition",
        f"widecolumn scan one partition ({PARTITION} rows), sqlite",
        "rows",
        "sqlite3 SELECT by partition",
        wc_ours,
        wc_raw,
    ),
]
