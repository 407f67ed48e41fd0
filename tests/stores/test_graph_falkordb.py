"""FalkorDB-only graph tests: a server that is down or restarted, a Redis without the
graph module, parameter values the CYPHER header cannot carry, schemaless properties."""

from __future__ import annotations

import asyncio
import datetime

import pytest

from multistore.errors import (
    InvalidValueError,
    StoreUnavailableError,
    UnsupportedError,
)
from multistore.lab.servers import FalkorDBServer, RedisServer, free_port
from multistore.stores import open_store
from multistore.stores.graph import GraphStore
from multistore.stores.graph._falkordb import FalkorDBGraphStore

pytestmark = pytest.mark.server


async def _open(url: str) -> FalkorDBGraphStore:
    store = await open_store(url)
    assert isinstance(store, FalkorDBGraphStore)
    return store


def test_closed_port_is_unavailable_fast() -> None:
    async def main() -> None:
        # A timeout far past pytest's per-test timeout: an open that waited it out,
        # instead of taking the refusal at once, would fail the test by timing out.
        with pytest.raises(StoreUnavailableError) as info:
            await _open(f"falkordb://127.0.0.1:{free_port()}/g?timeout=3600")
        assert info.value.definite  # refused: nothing was sent

    asyncio.run(main())


def test_server_down_then_back_same_store(falkordb_server: FalkorDBServer) -> None:
    url = falkordb_server.url("restart_graph")

    async def main() -> None:
        store = await _open(url)
        try:
            await store.clear()
            await store.create_node("User", "Alice", {"age": 30})
            falkordb_server.stop()
            try:
                # unavailable (refused), not a StoreTimeoutError from waiting one out
                with pytest.raises(StoreUnavailableError):
                    await store.count_nodes()
                with pytest.raises(StoreUnavailableError):
                    await store.create_node("User", "Bob")
            finally:
                falkordb_server.start()
            # The same store object works again; the data may or may not have been kept
            # (that is the server's persistence setting), so write it again.
            await store.create_node("User", "Alice", {"age": 31})
            await store.create_node("User", "Bob", {"age": 25})
            await store.create_relationship("User", "Alice", "FOLLOWS", "User", "Bob")
            assert await store.count_nodes("User") == 2
            assert [n["key"] for n in await store.neighbors("User", "Alice", "FOLLOWS")] == ["Bob"]
            await store.clear()
        finally:
            await store.close()

    asyncio.run(main())


def test_plain_redis_is_not_a_graph_server(redis_server: RedisServer) -> None:
    async def main() -> None:
        with pytest.raises(UnsupportedError, match="FalkorDB"):
            await _open(f"falkordb://{redis_server.host}:{redis_server.port}/g")

    asyncio.run(main())


def test_default_graph_name(falkordb_server: FalkorDBServer) -> None:
    async def main() -> None:
        store = await _open(f"falkordb://{falkordb_server.host}:{falkordb_server.port}")
        try:
            assert store.graph_name == "multistore"
            assert store.native.name == "multistore"
        finally:
            await store.close()

    asyncio.run(main())


def test_parameters_the_header_cannot_carry(falkordb_url: str) -> None:
    class Sneaky:
        def __str__(self) -> str:
            return "1 MATCH (n) DETACH DELETE n"

    async def main() -> None:
        store = await _open(falkordb_url)
        try:
            await store.create_node("User", "Alice")
            for value in (Sneaky(), datetime.date(2024, 1, 1), float("nan"), "a\x00b", b"x"):
                with pytest.raises(InvalidValueError):
                    await store.query("RETURN $x AS x", {"x": value})
            with pytest.raises(InvalidValueError):
                await store.query("RETURN $x AS x", {"x": {"a`b": 1}})
            assert await store.query("RETURN $x AS x", {"x": {"a b": [1, None]}}) == [
                {"x": {"a b": [1, None]}}
            ]
            assert await store.count_nodes() == 1
        finally:
            await store.close()

    asyncio.run(main())


def test_schemaless_properties_and_key_index(falkordb_url: str) -> None:
    async def main() -> None:
        store: GraphStore = await _open(falkordb_url)
        try:
            await store.create_node("User", "Alice", {"age": 30})
            await store.create_node("User", "Bob", {"age": "unknown"})  # no column types here
            node = await store.get_node("User", "Bob")
            assert node is not None and node["age"] == "unknown"
            rows = await store.query("CALL db.indexes() YIELD label, properties")
            assert {"label": "User", "properties": ["key"]} in rows
        finally:
            await store.close()

    asyncio.run(main())
