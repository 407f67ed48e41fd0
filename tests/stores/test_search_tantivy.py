"""tantivy-only search tests: the directory layout, in-memory indexes, several store
objects on one directory, and broken metadata."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import tantivy

from multistore.errors import StoreError, StoreUnavailableError
from multistore.stores import open_store
from multistore.stores.search import SearchStore
from tests.stores.test_search import CATALOG, LAPTOP_IDS, SCHEMA


async def _open(url: str) -> SearchStore:
    store = await open_store(url, model="search")
    assert isinstance(store, SearchStore)
    return store


def test_directory_holds_metadata_and_one_subdirectory_per_index(tmp_path: Path) -> None:
    root = tmp_path / "search"

    async def body() -> None:
        store = await _open(f"tantivy:///{root}")
        try:
            await store.create_index("products", SCHEMA)
            await store.create_index("drafts", SCHEMA)
            await store.index("products", CATALOG)
            meta = json.loads((root / "indexes.json").read_text())
            assert meta["indexes"]["products"] == SCHEMA.to_dict()
            assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["drafts", "products"]
            assert (root / "products" / "meta.json").exists()  # a real tantivy index
            native = store.native
            assert isinstance(native["products"], tantivy.Index)
            assert native["products"].searcher().num_docs == 10
            await store.drop_index("drafts")
            assert not (root / "drafts").exists()
            assert "drafts" not in json.loads((root / "indexes.json").read_text())["indexes"]
        finally:
            await store.close()

    asyncio.run(body())


def test_in_memory_store_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    async def body() -> None:
        store = await _open("tantivy:///:memory:")
        try:
            await store.create_index("products", SCHEMA)
            await store.index("products", CATALOG)
            assert set((await store.search("products", "laptops", limit=20)).ids) == LAPTOP_IDS
            await store.drop_index("products")
            assert await store.indexes() == []
        finally:
            await store.close()

    asyncio.run(body())
    assert list(tmp_path.iterdir()) == []


def test_second_store_reads_what_the_first_wrote(tmp_path: Path) -> None:
    url = f"tantivy:///{tmp_path / 'search'}"

    async def body() -> None:
        writer = await _open(url)
        reader = await _open(url)
        try:
            await writer.create_index("products", SCHEMA)
            await writer.index("products", CATALOG)
            assert await reader.indexes() == ["products"]  # created after reader opened
            assert set((await reader.search("products", "laptop", limit=20)).ids) == LAPTOP_IDS
            # Only one store object writes a directory at a time: tantivy's lock.
            with pytest.raises(StoreUnavailableError):
                await reader.index("products", [{"id": "x", "title": "x"}])
            assert await writer.get("products", "x") is None
        finally:
            await writer.close()
            await reader.close()

    asyncio.run(body())


def test_broken_metadata_is_a_store_error(tmp_path: Path) -> None:
    root = tmp_path / "search"
    root.mkdir()
    (root / "indexes.json").write_text("{not json")

    async def body() -> None:
        with pytest.raises(StoreError):
            await _open(f"tantivy:///{root}")

    asyncio.run(body())


def test_path_that_is_a_file_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")

    async def body() -> None:
        with pytest.raises(StoreUnavailableError):
            await _open(f"tantivy:///{path}")

    asyncio.run(body())


def test_index_definitions_created_by_two_processes_at_once_all_stay(tmp_path: Path) -> None:
    """Each of two processes creates 12 indexes in one directory at the same time; every
    create that returned must be in the metadata a fresh store reads (a read-modify-write
    without a lock kept only the last writer's view)."""
    from tests.stores.test_two_processes import TAGS, run_pair

    url = f"tantivy:///{tmp_path / 'search'}"
    lines = run_pair("tantivy-creates", url, tmp_path)
    acked = {line["args"][0] for tag in TAGS for line in lines[tag] if line["ok"]}

    async def body() -> None:
        store = await _open(url)
        try:
            assert acked - set(await store.indexes()) == set(), "acknowledged creates lost"
        finally:
            await store.close()

    asyncio.run(body())
    refused = [line for tag in TAGS for line in lines[tag] if not line["ok"]]
    assert not refused, "a create was refused"


def test_drop_is_refused_while_another_store_object_writes_the_index(tmp_path: Path) -> None:
    url = f"tantivy:///{tmp_path / 'search'}"

    async def body() -> None:
        writer, other = await _open(url), await _open(url)
        try:
            await writer.create_index("products", SCHEMA)
            await writer.index("products", CATALOG)  # holds the index's writer
            with pytest.raises(StoreUnavailableError) as refused:
                await other.drop_index("products")
            assert refused.value.definite
            assert await other.indexes() == ["products"]
            assert (await writer.search("products", limit=0)).total == len(CATALOG)
        finally:
            await writer.close()
        await other.drop_index("products")  # the writer let go: now it may
        assert await other.indexes() == []
        await other.close()

    asyncio.run(body())
