"""What the sync API promises beyond the conformance suites (which run against both
APIs): embedded calls run on the caller's thread, a store may be shared by threads,
and a model or backend without a sync twin is refused clearly."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from multistore.errors import UnsupportedError, UsageError
from multistore.sync import (
    ClusteringColumn,
    DocumentStore,
    KeyValueStore,
    Point,
    RelationalStore,
    TableSchema,
    TimeSeriesStore,
    WideColumnStore,
    open_store,
)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.server)])
def kv(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyValueStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'kv.db'}"
    else:
        url = f"{request.getfixturevalue('redis_url')}?prefix=sync{id(tmp_path)}:"
    store = open_store(url, model="kv")
    assert isinstance(store, KeyValueStore)
    with store:
        yield store


def _threads(count: int, work: object) -> None:
    assert callable(work)
    threads = [threading.Thread(target=work) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()


def test_embedded_call_runs_on_the_callers_thread(tmp_path: Path) -> None:
    before = threading.active_count()
    with open_store(f"sqlite:///{tmp_path / 'kv.db'}", model="kv") as store:
        assert isinstance(store, KeyValueStore)
        store.set("k", "v")
        assert store.get("k") == b"v"
        assert threading.active_count() == before  # no worker thread was started
        seen: list[int] = []
        store.run(lambda conn: seen.append(threading.get_ident()))  # type: ignore[attr-defined]
        assert seen == [threading.get_ident()]
        other: list[int] = []

        def elsewhere() -> None:
            store.run(lambda conn: other.append(threading.get_ident()))  # type: ignore[attr-defined]

        t = threading.Thread(target=elsewhere)
        t.start()
        t.join()
        assert other == [t.ident]
    with open_store(f"duckdb:///{tmp_path / 'm.duckdb'}") as metrics:
        assert isinstance(metrics, TimeSeriesStore)
        metrics.write(Point("cpu", {"host": "a"}, {"load": 1.0}, datetime.now(UTC)))
        assert metrics.measurements() == ["cpu"]
        assert threading.active_count() == before  # nor for DuckDB


def test_threads_share_one_store(kv: KeyValueStore) -> None:
    """Calls from several threads on one store each apply once and atomically."""
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(40):
                kv.incr("hits")
                kv.zincrby("board", "x", 1)
                kv.rate_limit("burst", 25, 60)
        except BaseException as exc:  # handed to the test below
            errors.append(exc)

    _threads(4, work)
    assert errors == []
    assert kv.get("hits") == b"160"
    assert kv.zscore("board", "x") == 160
    assert kv.rate_limit("burst", 25, 60).allowed is False  # exactly 25 were counted


def test_compare_and_set_across_threads_has_one_winner(kv: KeyValueStore) -> None:
    kv.set("n", "0")
    for round_ in range(5):
        won: list[bool] = []
        start = threading.Barrier(4)

        def work(
            seen: bytes = str(round_).encode(),
            new: str = str(round_ + 1),
            start: threading.Barrier = start,
            won: list[bool] = won,
        ) -> None:
            start.wait(timeout=30)
            won.append(kv.compare_and_set("n", seen, new))

        _threads(4, work)
        assert sorted(won) == [False, False, False, True]
    assert kv.get("n") == b"5"


def test_closed_store_refuses_calls(kv: KeyValueStore) -> None:
    kv.close()
    kv.close()  # twice is fine
    with pytest.raises(UsageError, match="closed"):
        kv.get("k")


def test_a_backend_without_a_sync_twin_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedError, match=r"search model on tantivy://.*async API"):
        open_store(f"tantivy:///{tmp_path / 'idx'}")
    with pytest.raises(UnsupportedError, match="duckdb:// does not serve the kv model"):
        open_store(f"duckdb:///{tmp_path / 'x.db'}", model="kv")


def test_threads_share_one_document_store(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 'docs.db'}", model="document") as store:
        assert isinstance(store, DocumentStore)
        store.insert("counters", {"_id": "c", "n": 0})

        def work() -> None:
            for _ in range(25):
                assert store.update("counters", "c", {"$inc": {"n": 1}})
                store.insert("log", {"by": threading.get_ident()})

        _threads(4, work)
        assert store.get("counters", "c") == {"_id": "c", "n": 100}
        assert store.count("log") == 100


def test_threads_share_one_relational_store(tmp_path: Path) -> None:
    """Each thread's read-modify-write transaction runs whole, one at a time: no
    update is lost, and a thread that already holds the connection is told so
    instead of waiting for itself."""
    with open_store(f"sqlite:///{tmp_path / 'orders.db'}", model="relational") as store:
        assert isinstance(store, RelationalStore)
        store.execute("CREATE TABLE stock (sku TEXT PRIMARY KEY, qty INTEGER NOT NULL)")
        store.execute("INSERT INTO stock VALUES ('x', 0)")

        def work() -> None:
            for _ in range(20):
                with store.transaction() as tx:
                    qty = tx.fetch_val("SELECT qty FROM stock WHERE sku = 'x'")
                    tx.execute("UPDATE stock SET qty = :q WHERE sku = 'x'", {"q": qty + 1})

        _threads(4, work)
        assert store.fetch_val("SELECT qty FROM stock") == 80
        with store.transaction(), pytest.raises(UsageError, match="already holds"):
            store.execute("SELECT 1")


@pytest.mark.server
@pytest.mark.parametrize("server", ["postgres", "mariadb"])
def test_threads_share_one_server_store(server: str, request: pytest.FixtureRequest) -> None:
    """Each thread leases a pooled connection of its own; every transaction lands."""
    url = str(request.getfixturevalue(f"{server}_url"))
    with open_store(url, model="relational") as store:
        assert isinstance(store, RelationalStore)
        store.execute("CREATE TABLE hits (n INTEGER NOT NULL)")
        store.execute("INSERT INTO hits VALUES (0)")

        def work() -> None:
            for _ in range(20):
                with store.transaction() as tx:
                    tx.execute("UPDATE hits SET n = n + 1")
                    assert tx.fetch_val("SELECT COUNT(*) FROM hits") == 1

        _threads(4, work)
        assert store.fetch_val("SELECT n FROM hits") == 80


def test_threads_share_one_widecolumn_store(tmp_path: Path) -> None:
    schema = TableSchema(
        "events",
        partition_key=("user",),
        clustering=(ClusteringColumn("n", "asc"),),
        columns={"user": "text", "n": "int"},
    )
    with open_store(f"sqlite:///{tmp_path / 'wc.db'}", model="widecolumn") as store:
        assert isinstance(store, WideColumnStore)
        store.create_table(schema)

        def work(base: int) -> None:
            for i in range(25):
                store.upsert("events", {"user": "u", "n": base + i})

        threads = [threading.Thread(target=work, args=(100 * t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        rows = store.select("events", {"user": "u"})
        assert [r["n"] for r in rows] == sorted(100 * t + i for t in range(4) for i in range(25))


def test_threads_share_one_timeseries_store(tmp_path: Path) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with open_store(f"duckdb:///{tmp_path / 'm.duckdb'}") as store:
        assert isinstance(store, TimeSeriesStore)

        def work(host: str) -> None:
            for i in range(20):
                store.write(
                    Point("cpu", {"host": host}, {"load": float(i)}, start + timedelta(seconds=i))
                )

        threads = [threading.Thread(target=work, args=(f"h{t}",)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        points = store.query("cpu", start=start, end=start + timedelta(minutes=1))
        assert len(points) == 80
        assert {p.tags["host"] for p in points} == {"h0", "h1", "h2", "h3"}
