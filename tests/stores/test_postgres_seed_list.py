"""PostgreSQL URLs with a seed list reach libpq whole: every backend on PostgreSQL
(relational, document, search) connects through the second host when the first refuses,
and ``target_session_attrs`` is passed on."""

from __future__ import annotations

import asyncio

import pytest

from multistore.errors import StoreUnavailableError
from multistore.lab.servers import PostgresServer, free_port
from multistore.stores import open_store

pytestmark = pytest.mark.server


def _seed_list_url(postgres_url: str, extra: str = "") -> str:
    # A port nothing listens on first, then the real server.
    dead = free_port()
    head, _, tail = postgres_url.partition("@")
    host_port, _, path = tail.partition("/")
    return f"{head}@127.0.0.1:{dead},{host_port}/{path}{extra}"


@pytest.mark.parametrize("model", ["relational", "document", "search"])
def test_each_postgres_backend_tries_the_hosts_in_order(postgres_url: str, model: str) -> None:
    url = _seed_list_url(postgres_url, "?connect_timeout=2")

    async def main() -> None:
        store = await open_store(url, model=model)
        try:
            assert len(store.url.hosts) == 2
        finally:
            await store.close()

    asyncio.run(main())


def test_target_session_attrs_reaches_libpq(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    # The only reachable server is a primary: "read-only" must refuse it (libpq checked
    # the attribute), "read-write" must take it.
    async def main() -> None:
        store = await open_store(
            _seed_list_url(postgres_url, "?target_session_attrs=read-write"), model="relational"
        )
        await store.close()
        with pytest.raises(StoreUnavailableError, match="session is not read-only"):
            await open_store(
                _seed_list_url(postgres_url, "?target_session_attrs=read-only&connect_timeout=2"),
                model="relational",
            )

    asyncio.run(main())
