"""The outbox's ``add`` from sync code: events commit with the caller's sync
transaction, and the async outbox (which the relay uses) sees them in order."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from multistore.consistency import Outbox
from multistore.errors import InvalidValueError, UsageError
from multistore.stores import open_store as open_async_store
from multistore.stores.relational import RelationalStore
from multistore.sync import Outbox as SyncOutbox
from multistore.sync import RelationalStore as SyncRelationalStore
from multistore.sync import open_store


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.server)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shop.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def shop(url: str) -> Iterator[tuple[SyncRelationalStore, SyncOutbox]]:
    store = open_store(url, model="relational")
    assert isinstance(store, SyncRelationalStore)
    with store:
        store.execute("CREATE TABLE products (id VARCHAR(50) PRIMARY KEY, name VARCHAR(100))")
        outbox = SyncOutbox(store)
        outbox.setup()
        outbox.setup()  # twice is fine
        yield store, outbox


def _async_view(url: str) -> list[tuple[str, int, str, object]]:
    async def read() -> list[tuple[str, int, str, object]]:
        store = await open_async_store(url, model="relational")
        assert isinstance(store, RelationalStore)
        try:
            records = await Outbox(store).events()
            return [(r.event.aggregate, r.event.seq, r.state, r.event.payload) for r in records]
        finally:
            await store.close()

    return asyncio.run(read())


def test_event_commits_with_the_business_write_or_not_at_all(
    url: str, shop: tuple[SyncRelationalStore, SyncOutbox]
) -> None:
    store, outbox = shop
    with store.transaction() as tx:
        tx.execute("INSERT INTO products VALUES ('p-1', 'one')")
        first = outbox.add(tx, "p", "product.upserted", {"id": "p-1"})
    assert (first.aggregate, first.seq, first.event_type) == ("p", 1, "product.upserted")

    class Abort(Exception):
        """A business error that rolls the transaction back."""

    with pytest.raises(Abort), store.transaction() as tx:
        tx.execute("INSERT INTO products VALUES ('p-2', 'two')")
        outbox.add(tx, "p", "product.upserted", {"id": "p-2"})
        raise Abort
    with store.transaction() as tx:
        again = outbox.add(tx, "p", "product.upserted", {"id": "p-3"})
    assert again.seq == 2  # the rolled-back number is used again: no gap
    assert store.fetch_val("SELECT COUNT(*) FROM products") == 1
    assert _async_view(url) == [
        ("p", 1, "pending", {"id": "p-1"}),
        ("p", 2, "pending", {"id": "p-3"}),
    ]


def test_bad_input_is_refused_and_nothing_is_written(
    shop: tuple[SyncRelationalStore, SyncOutbox],
) -> None:
    store, outbox = shop
    for aggregate, event_type, payload in [("", "t", {}), ("p", "t", {"x": object()})]:
        with pytest.raises(InvalidValueError, match="outbox event's"), store.transaction() as tx:
            tx.execute("INSERT INTO products VALUES ('p-1', 'one')")
            outbox.add(tx, aggregate, event_type, payload)
    with pytest.raises(UsageError, match="open transaction"):
        outbox.add(store, "p", "t", {})  # type: ignore[arg-type]
    with store.transaction() as done:
        assert done.fetch_val("SELECT COUNT(*) FROM products") == 0  # open: it reads
    with pytest.raises(UsageError, match="open transaction"):
        outbox.add(done, "p", "t", {})
    assert store.fetch_val("SELECT COUNT(*) FROM products") == 0
    with pytest.raises(UsageError, match="table names"):
        SyncOutbox(store, table="Outbox; DROP")


def test_threads_writing_one_aggregate_get_every_number_once(
    shop: tuple[SyncRelationalStore, SyncOutbox],
) -> None:
    store, outbox = shop
    seqs: list[int] = []

    def writer(w: int) -> None:
        for i in range(10):
            with store.transaction() as tx:
                seqs.append(outbox.add(tx, "hot", "t", {"w": w, "i": i}).seq)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    assert sorted(seqs) == list(range(1, 41))
