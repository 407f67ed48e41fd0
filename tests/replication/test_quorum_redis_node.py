"""The quorum's Redis node on real servers: the lean RESP client for ``redis://``, the
redis-py link for the URLs the lean client cannot serve (a Unix socket here), failure
outcomes, and the :class:`Reply` futures the coordinator's fan-out listens to."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from multistore._redis_link import RedisPyLink
from multistore._resp import RespPool, pack_command
from multistore.core._quorum import QuorumConfig
from multistore.errors import Outcome, StoreError, StoreTimeoutError, StoreUnavailableError
from multistore.lab.servers import RedisServer, unique_name
from multistore.replication._qnodes import Reply, SQLiteNode, entry_name
from multistore.replication._qredis import RedisNode
from multistore.replication._quorum import QuorumCluster

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def unix_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, Path]]:
    """A Redis server listening on TCP and on a Unix socket."""
    sock = tmp_path_factory.mktemp("sock") / "redis.sock"
    server = RedisServer(extra_args=["--unixsocket", str(sock), "--unixsocketperm", "700"])
    server.start()
    try:
        yield server, sock
    finally:
        server.cleanup()


@contextlib.asynccontextmanager
async def _closing(*nodes: RedisNode) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for node in nodes:
            await node.close()


async def _exercise(node: RedisNode) -> None:
    """Every node operation once, checked."""
    await node.ping()
    assert await node.read(b"g", b"m") is None
    assert await node.write_lww(b"g", b"m", "0002", b"two") is True
    assert await node.write_lww(b"g", b"m", "0001", b"older") is False  # LWW kept "two"
    assert await node.read(b"g", b"m") == ("0002", b"two")
    assert await node.write_cas(b"g", b"n", "0003", b"new", None) is True
    assert await node.write_cas(b"g", b"n", "0004", b"x", ("9", b"not held")) is False
    assert await node.write_cas(b"g", b"n", "0004", b"newer", ("0003", b"new")) is True
    rows = await node.scan(b"g", None, None)
    assert rows == [(b"m", ("0002", b"two")), (b"n", ("0004", b"newer"))]
    assert await node.scan(b"g", b"n", None, reverse=True, limit=1) == [(b"n", ("0004", b"newer"))]
    entries = await node.entries(0, 2**64 - 1)
    assert [name for name, _ in entries] == sorted([entry_name(b"g", b"m"), entry_name(b"g", b"n")])
    leaves = await node.leaf_hashes([(0, 2**64 - 1)], 0)
    assert list(leaves) == [0]
    assert await node.remove(b"g", b"m", expected=("0002", b"not held")) is False
    assert await node.read(b"g", b"m") == ("0002", b"two")  # not what the caller read
    assert await node.remove(b"g", b"m", expected=("0002", b"two")) is True
    assert await node.read(b"g", b"m") is None
    assert await node.remove(b"g", b"m") is False  # nothing left
    assert [name for name, _ in await node.entries(0, 2**64 - 1)] == [entry_name(b"g", b"n")]
    await node.wipe()
    assert await node.scan(b"g", None, None) == []


def test_unix_socket_urls_go_through_redis_py_with_the_same_layout(
    unix_redis: tuple[RedisServer, Path],
) -> None:
    server, sock = unix_redis
    prefix = unique_name("q") + ":"

    async def body() -> None:
        node = RedisNode.from_url("u", f"unix://{sock}?db=0", timeout=5.0, prefix=prefix)
        lean = RedisNode.from_url("t", server.url(), timeout=5.0, prefix=prefix)
        async with _closing(node, lean):
            assert isinstance(node.link, RedisPyLink)
            assert isinstance(lean.link, RespPool)
            await _exercise(node)
            # the script cache is gone (a restart, SCRIPT FLUSH): EVALSHA, then EVAL
            assert server.command("SCRIPT", "FLUSH").startswith(b"+OK")
            assert await node.write_lww(b"g", b"m", "0005", b"after flush") is True
            # the two links store the same thing the same way
            assert await lean.read(b"g", b"m") == ("0005", b"after flush")
            assert await lean.entries(0, 2**64 - 1) == await node.entries(0, 2**64 - 1)

    asyncio.run(body())


def test_lean_node_runs_every_operation(redis_url: str) -> None:
    async def body() -> None:
        node = RedisNode.from_url("t", redis_url, timeout=5.0, prefix=unique_name("q") + ":")
        async with _closing(node):
            assert isinstance(node.link, RespPool)
            await _exercise(node)

    asyncio.run(body())


def test_a_node_that_is_down_fails_definitely_a_silent_one_indeterminately(
    redis_url: str, tcp_proxy: Callable[[str, int], Any]
) -> None:
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    proxy = tcp_proxy("127.0.0.1", port)

    async def body() -> None:
        down = RedisNode.from_url("down", f"redis://127.0.0.1:{free}/0", timeout=5.0)
        silent = RedisNode.from_url("silent", f"redis://127.0.0.1:{proxy.port}/0", timeout=0.5)
        async with _closing(down, silent):
            with pytest.raises(StoreUnavailableError) as refused:
                await down.write_lww(b"g", b"", "0001", b"v")
            assert refused.value.outcome is Outcome.DEFINITE  # never sent
            await silent.ping()  # connected through the proxy
            proxy.blackhole()
            with pytest.raises(StoreTimeoutError) as timed_out:
                await silent.write_lww(b"g", b"", "0001", b"v")
            assert timed_out.value.outcome is Outcome.INDETERMINATE  # sent, no answer
            proxy.restore()

    asyncio.run(body())


def test_a_write_redis_refuses_before_running_it_fails_definitely(
    redis_server: RedisServer, redis_url: str
) -> None:
    async def body() -> None:
        node = RedisNode.from_url("n", redis_url, timeout=5.0, prefix=unique_name("q") + ":")
        async with _closing(node):
            assert redis_server.command("CONFIG", "SET", "min-replicas-to-write", "1")[:3] == b"+OK"
            try:
                with pytest.raises(StoreError, match="NOREPLICAS") as refused:
                    await node.write_lww(b"g", b"", "0001", b"v")
                assert refused.value.outcome is Outcome.DEFINITE
                assert await node.read(b"g") is None  # reads are still served
            finally:
                redis_server.command("CONFIG", "SET", "min-replicas-to-write", "0")
            assert await node.write_lww(b"g", b"", "0001", b"v") is True

    asyncio.run(body())


def test_one_write_to_nodes_with_different_prefixes_lands_under_each(redis_url: str) -> None:
    """A request's command is packed once for all its replicas: never across prefixes."""

    async def body() -> None:
        a = RedisNode.from_url("a", redis_url, timeout=5.0, prefix=unique_name("a") + ":")
        b = RedisNode.from_url("b", redis_url, timeout=5.0, prefix=unique_name("b") + ":")
        blob = b"the same object"
        async with _closing(a, b):
            assert await a.write_lww(b"g", b"", "0001", blob) is True
            assert await b.write_lww(b"g", b"", "0001", blob) is True  # not "already held"
            assert await a.read(b"g") == ("0001", blob)
            assert await b.read(b"g") == ("0001", blob)
            await a.wipe()
            assert await a.read(b"g") is None
            assert await b.read(b"g") == ("0001", blob)

    asyncio.run(body())


def test_quorum_cluster_over_the_lean_client_survives_a_restart(redis_url: str) -> None:
    """Idle connections to a restarted server are replaced, not used."""

    async def body(server: RedisServer) -> None:
        cluster = await QuorumCluster.redis(
            [server.url(0), server.url(1), server.url(2)],
            prefix=unique_name("q") + ":",
            config=QuorumConfig(n=3, r=2, w=2),
            timeout=5.0,
        )
        try:
            await cluster.put("k", 1)
            await cluster.wait_background()
            server.stop()
            server.start()
            await cluster.put("k", 2)
            assert (await cluster.get("k")).value == 2
            assert cluster.detector.view()[0]["failures"] == 0  # nothing failed
        finally:
            await cluster.close()

    server = RedisServer(appendonly=True)
    server.start()
    try:
        asyncio.run(body(server))
    finally:
        server.cleanup()


def test_reply_listeners_hear_at_once_when_it_is_settled_or_cancelled() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        heard: list[str] = []
        reply: Reply[int] = Reply(loop=loop)
        reply.listen(lambda r: heard.append(f"a{r.result()}"))
        reply.listen(lambda r: heard.append(f"b{r.result()}"))
        reply.settle(7)
        assert heard == ["a7", "b7"]  # before any turn of the event loop
        reply.listen(lambda r: heard.append("late"))  # already settled: told now
        assert heard == ["a7", "b7", "late"]
        assert await reply == 7

        failed: Reply[int] = Reply(loop=loop)
        failed.listen(lambda r: heard.append(type(r.exception()).__name__))
        failed.settle(None, StoreUnavailableError("down"))
        assert heard[-1] == "StoreUnavailableError"

        cancelled: Reply[int] = Reply(loop=loop)
        cancelled.listen(lambda r: heard.append(f"cancelled={r.cancelled()}"))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0):  # the awaiter gives up: the reply is cancelled
                await cancelled
        assert heard[-1] == "cancelled=True"
        cancelled.settle(1)  # a reply arriving afterwards changes nothing
        assert cancelled.cancelled()

    asyncio.run(body())


def test_url_user_password_with_reserved_characters_and_database(redis_url: str) -> None:
    password = "p@ss:w/rd?#% "
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    prefix = unique_name("q") + ":"

    async def body() -> None:
        admin = RespPool("127.0.0.1", port)
        user = unique_name("u")
        acl = pack_command("ACL", "SETUSER", user, "on", ">" + password, "~*", "+@all")
        assert await admin.call(acl) == b"OK"
        quoted = quote(password, safe="")
        node = RedisNode.from_url(
            "p", f"redis://{user}:{quoted}@127.0.0.1:{port}/3", timeout=5.0, prefix=prefix
        )
        wrong = RedisNode.from_url("w", f"redis://{user}:nope@127.0.0.1:{port}/3", timeout=5.0)
        db0 = RedisNode.from_url("0", f"redis://127.0.0.1:{port}/0", timeout=5.0, prefix=prefix)
        db3 = RedisNode.from_url("3", f"redis://127.0.0.1:{port}/3", timeout=5.0, prefix=prefix)
        try:
            async with _closing(node, wrong, db0, db3):
                assert await node.write_lww(b"g", b"", "0001", b"v") is True
                assert await db3.read(b"g") == ("0001", b"v")  # SELECT 3 took effect
                assert await db0.read(b"g") is None
                with pytest.raises(StoreUnavailableError, match="AUTH"):
                    await wrong.read(b"g")
        finally:
            await admin.call(pack_command("ACL", "DELUSER", user))
            admin.close()

    asyncio.run(body())


_STAMPS = [
    # the usual form: fixed-width hex physical time and counter, then the node id
    "0190a1b2c3d4-000001-a",
    "0190a1b2c3d4-000001-b",
    "0190a1b2c3d4-000001-ab",
    "0190a1b2c3d4-000002-a",
    "0190a1b2c3d5-000000-a",
    "0190a1b2c3d5-000000-",
    "0190a1b2c3e0-000000-a",
    "1190a1b2c3d4-000000-a",
    "fffffffffffe-ffffff-z",
    "ffffffffffff-000000-a",
    # not in that form: only the bytes decide (numbers would order these otherwise)
    "0002",
    "00010",
    "0190A1B2C3D4-000001-a",
    "0190B1B2C3D4-000001-a",
    "0x90a1b2c3d4-000001-a",
    " 190a1b2c3d4-000001-a",
    "0190a1b2c3d4-00001-a",
    "0190a1b2c3d4-000001",
    "0190a1b2c3d4",
    "",
]


def test_redis_and_sqlite_nodes_keep_the_same_write_and_digest(
    redis_url: str, tmp_path: Path
) -> None:
    """Last writer wins by the HLC texts' byte order on both node kinds, whatever the
    texts look like (the Redis script compares the usual form as numbers), and both
    keep the same anti-entropy digests."""

    async def body() -> None:
        redis = RedisNode.from_url("r", redis_url, timeout=5.0, prefix=unique_name("q") + ":")
        sqlite = await SQLiteNode("s", tmp_path / "s.db").open()
        try:
            for i, first in enumerate(_STAMPS):
                for j, second in enumerate(_STAMPS):
                    group = b"g%d-%d" % (i, j)
                    for node in (redis, sqlite):
                        assert await node.write_lww(group, b"", first, b"1") is True
                        stored = await node.write_lww(group, b"", second, b"2")
                        assert stored is (second.encode() > first.encode()), (first, second)
            assert await redis.entries(0, 2**64 - 1) == await sqlite.entries(0, 2**64 - 1)
            assert await redis.leaf_hashes([(0, 2**64 - 1)], 8) == await sqlite.leaf_hashes(
                [(0, 2**64 - 1)], 8
            )
        finally:
            await redis.close()
            await sqlite.close()

    asyncio.run(body())
