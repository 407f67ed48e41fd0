"""Ladybug-only graph tests: the schema the helpers make (node/rel tables, inferred
column types, ALTER TABLE), typed columns refusing other types, raw DDL, opening."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import ladybug
import pytest

from multistore.errors import (
    DuplicateKeyError,
    InvalidQueryError,
    InvalidValueError,
    NotFoundError,
    StoreUnavailableError,
)
from multistore.stores import open_store
from multistore.stores.graph._ladybug import LadybugGraphStore

Body = Callable[[LadybugGraphStore], Awaitable[None]]


def run(url: str, body: Body) -> None:
    async def main() -> None:
        store = await open_store(url)
        assert isinstance(store, LadybugGraphStore)
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"ladybug:///{tmp_path / 'sub' / 'graph.lbdb'}"


async def columns(s: LadybugGraphStore, table: str) -> dict[str, str]:
    rows = await s.query(f"CALL table_info('{table}') RETURN *")
    return {row["name"]: row["type"] for row in rows}


def test_helpers_make_typed_tables(url: str) -> None:
    async def body(s: LadybugGraphStore) -> None:
        await s.create_node(
            "User", "Alice", {"age": 30, "score": 1.5, "name": "A", "ok": True, "tags": ["x"]}
        )
        assert await columns(s, "User") == {
            "key": "STRING",
            "age": "INT64",
            "score": "DOUBLE",
            "name": "STRING",
            "ok": "BOOL",
            "tags": "STRING[]",
        }
        await s.create_node("User", "Bob", {"city": "Oslo", "ids": [1, 2], "gone": None})
        cols = await columns(s, "User")
        assert cols["city"] == "STRING" and cols["ids"] == "INT64[]" and "gone" not in cols
        await s.create_node("Page", "p")
        await s.create_relationship("User", "Alice", "FOLLOWS", "User", "Bob", {"since": 2020})
        await s.create_relationship("User", "Alice", "FOLLOWS", "Page", "p", {"w": 0.5})
        rels = await s.query("CALL show_connection('FOLLOWS') RETURN *")
        assert {(r["source table name"], r["destination table name"]) for r in rels} == {
            ("User", "User"),
            ("User", "Page"),
        }
        assert await columns(s, "FOLLOWS") == {"since": "INT64", "w": "DOUBLE"}
        assert [n["key"] for n in await s.neighbors("User", "Alice", "FOLLOWS")] == ["Bob", "p"]

    run(url, body)


def test_typed_columns_refuse_other_types(url: str) -> None:
    async def body(s: LadybugGraphStore) -> None:
        await s.create_node("User", "Alice", {"age": 30, "score": 1.5, "tags": ["a"], "ok": True})
        await s.create_node("User", "Bob", {"age": 25})
        await s.create_relationship("User", "Alice", "FOLLOWS", "User", "Bob", {"since": 2020})
        for props in (
            {"age": "thirty"},
            {"age": 2.5},
            {"age": True},
            {"tags": [1]},
            {"tags": "a"},
            {"score": "x"},
            {"ok": "yes"},
            {"ok": 1},
        ):
            with pytest.raises(InvalidValueError, match="column has type"):
                await s.create_node("User", "Alice", {"new": 1, **props})
        with pytest.raises(InvalidValueError):
            await s.create_relationship("User", "Alice", "FOLLOWS", "User", "Bob", {"since": "x"})
        node = await s.get_node("User", "Alice")
        assert node is not None
        assert (node["age"], node["score"], node["tags"]) == (30, 1.5, ["a"])
        assert "new" not in await columns(s, "User")  # the failed write added no column
        # An int is welcome in a DOUBLE column, and read back as a float.
        await s.create_node("User", "Alice", {"score": 2})
        node = await s.get_node("User", "Alice")
        assert node is not None and node["score"] == 2.0 and isinstance(node["score"], float)

    run(url, body)


def test_raw_ddl_and_helpers_together(url: str) -> None:
    async def body(s: LadybugGraphStore) -> None:
        await s.query("CREATE NODE TABLE City(key STRING PRIMARY KEY, population INT64)")
        await s.create_node("City", "Oslo", {"population": 700000})
        assert await s.count_nodes("City") == 1
        await s.query("CREATE NODE TABLE Person(name STRING PRIMARY KEY)")
        await s.query("CREATE (:Person {name: $n})", {"n": "Ann"})
        with pytest.raises(InvalidQueryError, match="no 'key' property"):
            await s.create_node("Person", "Ann")
        assert await s.query("MATCH (p:Person) RETURN p.name AS name") == [{"name": "Ann"}]
        with pytest.raises(DuplicateKeyError):
            await s.query("CREATE (:Person {name: $n})", {"n": "Ann"})
        with pytest.raises(NotFoundError):
            await s.query("MATCH (x:Nowhere) RETURN x")
        await s.query("DROP TABLE City")
        with pytest.raises(NotFoundError):
            await s.count_nodes("City")

    run(url, body)


def test_names_are_case_insensitive(url: str) -> None:
    async def body(s: LadybugGraphStore) -> None:
        await s.create_node("User", "Alice", {"Age": 30})
        await s.create_node("user", "Bob", {"age": 25})
        assert await s.count_nodes("USER") == 2
        node = await s.get_node("User", "Bob")
        assert node is not None and node["Age"] == 25

    run(url, body)


def test_in_memory_graph() -> None:
    async def body(s: LadybugGraphStore) -> None:
        await s.create_node("User", "Alice")
        assert await s.count_nodes() == 1
        assert isinstance(s.native, ladybug.Connection)

    run("ladybug:///:memory:", body)
    run("ladybug:///:memory:", lambda s: _assert_empty(s))


async def _assert_empty(s: LadybugGraphStore) -> None:
    assert await s.count_nodes() == 0


def test_unopenable_path_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")

    async def main() -> None:
        with pytest.raises(StoreUnavailableError) as info:
            await open_store(f"ladybug:///{blocker / 'graph.lbdb'}")
        assert info.value.definite

    asyncio.run(main())


def test_two_store_objects_on_one_file_share_the_database(url: str) -> None:
    """Two stores of one process on one file see each other's writes, and every write
    one of them acknowledged is still there once both are closed (a second
    ``ladybug.Database`` on the file would have kept its own copy and lost it)."""

    async def body() -> None:
        first, second = await open_store(url), await open_store(url)
        assert isinstance(first, LadybugGraphStore) and isinstance(second, LadybugGraphStore)
        try:
            await first.create_node("Person", "p1", {"age": 1})
            await second.create_node("Person", "p2", {"age": 2, "city": "Oslo"})
            await first.create_node("Town", "oslo")
            await second.create_relationship("Person", "p2", "LIVES_IN", "Town", "oslo")
            assert await first.count_nodes("Person") == 2
            assert [n["key"] for n in await first.neighbors("Person", "p2")] == ["oslo"]
        finally:
            await first.close()
        assert await second.count_nodes() == 3  # closing one leaves the other working
        await second.close()
        again = await open_store(url)
        assert isinstance(again, LadybugGraphStore)
        try:
            assert await again.count_nodes("Person") == 2
            assert (await again.get_node("Person", "p2") or {}).get("city") == "Oslo"
        finally:
            await again.close()

    asyncio.run(body())
