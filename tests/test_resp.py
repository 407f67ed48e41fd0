"""The lean RESP2 client behind the Redis idempotency backend and the quorum's Redis
nodes: the reply parser (pure) and the pool against a real Redis server (SELECT,
NOSCRIPT fallback, restart, down, callbacks, queueing, cancellation, scripts)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from multistore import _resp
from multistore._redis_link import RedisPyLink, open_link, redis_py_link
from multistore._resp import (
    HIREDIS,
    INCOMPLETE,
    Reader,
    RespConnectionError,
    RespError,
    RespPool,
    RespProtocolError,
    RespReader,
    RespScript,
    RespTimeoutError,
    new_reader,
    pack_command,
    parse_reply,
)
from multistore.consistency._idempotency import Idempotency, IdempotencyPolicy, idempotent
from multistore.consistency._idempotency_backends import RedisRecords
from multistore.errors import Outcome, StoreUnavailableError
from multistore.lab._redis import RedisServer
from multistore.stores import open_store
from multistore.stores.kv import WrongTypeError
from multistore.stores.kv._redis import RedisKeyValueStore
from multistore.urls import parse_url

# (wire bytes, parsed value) for every RESP2 reply type, nested arrays included.
REPLIES: list[tuple[bytes, object]] = [
    (b"+OK\r\n", b"OK"),
    (b"-NOSCRIPT No matching script\r\n", RespError("NOSCRIPT No matching script")),
    (b":0\r\n", 0),
    (b":-42\r\n", -42),
    (b"$5\r\nhello\r\n", b"hello"),
    (b"$0\r\n\r\n", b""),
    (b"$4\r\na\r\nb\r\n", b"a\r\nb"),  # CRLF inside a bulk string is data
    (b"$-1\r\n", None),
    (b"*-1\r\n", None),
    (b"*0\r\n", []),
    (
        b"*5\r\n$7\r\ncreated\r\n:1\r\n$-1\r\n-ERR inner\r\n*2\r\n+a\r\n*1\r\n:7\r\n",
        [b"created", 1, None, RespError("ERR inner"), [b"a", [7]]],
    ),
]


@pytest.mark.parametrize(("wire", "value"), REPLIES)
def test_every_reply_type_parses(wire: bytes, value: object) -> None:
    assert parse_reply(wire) == (value, len(wire))
    # a reply followed by the start of the next one: only the first is consumed
    assert parse_reply(wire + b"$3\r\nab") == (value, len(wire))


READERS = [
    pytest.param(RespReader, id="python"),
    pytest.param(new_reader, id="hiredis"),  # hiredis comes with the redis extra
]


def test_hiredis_parses_the_replies() -> None:
    assert HIREDIS
    assert type(new_reader()) is not RespReader


@pytest.fixture(params=["hiredis", "python"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the connections' replies parsed by hiredis, then by the
    pure-Python reader (what runs where hiredis is not installed)."""
    if request.param == "python":
        monkeypatch.setattr(_resp, "_hiredis", None)
    assert (type(new_reader()) is RespReader) == (request.param == "python")
    return str(request.param)


@pytest.mark.parametrize("make", READERS)
@pytest.mark.parametrize(("wire", "value"), REPLIES)
def test_reply_split_at_every_byte(wire: bytes, value: object, make: Callable[[], Reader]) -> None:
    for cut in range(len(wire)):
        assert parse_reply(wire[:cut]) == (INCOMPLETE, 0), cut
        reader = make()
        reader.feed(wire[:cut])
        assert reader.gets() is INCOMPLETE
        reader.feed(wire[cut:])
        assert reader.gets() == value, cut
        assert not reader.has_data()
    # byte by byte, twice in a row on one reader
    reader = make()
    got: list[object] = []
    for byte in wire * 2:
        reader.feed(bytes([byte]))
        reply = reader.gets()
        if reply is not INCOMPLETE:
            got.append(reply)
    assert got == [value, value]


@pytest.mark.parametrize(
    "wire",
    [
        b"?x\r\n",  # unknown type
        b"%1\r\n",  # a RESP3 map
        b"\r\n",  # empty line
        b":12a\r\n",  # bad integer
        b"$x\r\n",  # bad bulk length
        b"$-2\r\n",  # negative bulk length
        b"$3\r\nabcXY",  # bulk not ended by CRLF
        b"*-5\r\n",  # negative array length
        b"*1\r\n!oops\r\n",  # bad element inside an array
        b"*1\r\n" * 100,  # nested too deeply
        b"+" + b"x" * 70_000,  # a line with no end in sight
    ],
)
def test_malformed_replies_are_protocol_errors(wire: bytes) -> None:
    with pytest.raises(RespProtocolError):
        parse_reply(wire)
    reader = RespReader()
    reader.feed(wire)
    with pytest.raises(RespProtocolError):
        reader.pop()


def test_commands_are_packed_as_bulk_arrays() -> None:
    assert pack_command("SELECT", 3) == b"*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n"
    assert pack_command(b"SET", "k\u00e9", 0.5) == (
        b"*3\r\n$3\r\nSET\r\n$3\r\nk\xc3\xa9\r\n$3\r\n0.5\r\n"
    )


# -- against a real server -------------------------------------------------------------


def test_pool_selects_db_and_runs_scripts_with_noscript_fallback(
    redis_url: str, redis_server: RedisServer, parser: str
) -> None:
    async def body() -> None:
        pool = RespPool("127.0.0.1", int(redis_url.rsplit(":", 1)[1].split("/")[0]), db=5)
        try:
            assert await pool.call(pack_command("SET", "k", "v5")) == b"OK"
            script = "return {KEYS[1], 1, redis.call('GET', KEYS[1])}"
            sha = "0" * 40  # never loaded: NOSCRIPT, then the fallback runs
            call = pack_command("EVALSHA", sha, 1, "k")
            reply = await pool.call(call, lambda: pack_command("EVAL", script, 1, "k"))
            assert reply == [b"k", 1, b"v5"]
            with pytest.raises(RespError, match="NOSCRIPT"):
                await pool.call(call)  # no fallback: the error reply is raised
            with pytest.raises(RespError, match="WRONGTYPE"):
                await pool.call(pack_command("LPUSH", "k", "x"))
            assert await pool.call(pack_command("GET", "k")) == b"v5"  # still usable
        finally:
            pool.close()
        # the SELECT took effect: db 0 does not have the key
        other = RespPool("127.0.0.1", pool.port)
        try:
            assert await other.call(pack_command("GET", "k")) is None
        finally:
            other.close()

    asyncio.run(body())


def test_lean_path_survives_a_server_restart(
    redis_url: str, redis_server: RedisServer, parser: str
) -> None:
    url = redis_server.url(2)
    with asyncio.Runner() as runner:
        store = runner.run(open_store(url, model="kv"))
        try:
            idem = Idempotency(store, policy=IdempotencyPolicy())
            assert isinstance(idem.backend, RedisRecords)
            lean: Any = store._link  # type: ignore[attr-defined]
            assert isinstance(lean, RespPool)
            executions = 0

            async def charge(order: str) -> str:
                nonlocal executions
                executions += 1
                return f"charged {order}"

            call = idempotent(idem, key=lambda order: order, client="shop")(charge)
            assert runner.run(call("o-1")) == "charged o-1"
            assert lean._idle, "the claim did not go through the lean pool"

            redis_server.stop()
            redis_server.start()

            # the idle connection is dead: the next call opens a fresh one and works
            assert runner.run(call("o-2")) == "charged o-2"
            assert runner.run(call("o-2")) == "charged o-2"  # replayed
            assert executions == 2
        finally:
            runner.run(store.close())
        assert not lean._idle  # closed with the store


def test_deadline_covers_the_reply_and_the_wait_for_a_connection(
    redis_url: str, redis_server: RedisServer
) -> None:
    """A stalled server (``CLIENT PAUSE`` from another connection): the command times
    out as sent (its outcome unknown), a second one waiting for the only connection
    times out as not sent, and the late reply is never read as the answer to a later
    command (the timed-out connection is dropped)."""
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])

    async def body() -> None:
        admin = RespPool("127.0.0.1", port)
        pool = RespPool("127.0.0.1", port, timeout=0.2, max_connections=1)
        try:
            assert await pool.call(pack_command("PING")) == b"PONG"  # connected, idle
            assert await admin.call(pack_command("CLIENT", "PAUSE", 1500, "ALL")) == b"OK"
            stalled = asyncio.ensure_future(pool.call(pack_command("ECHO", "first")))
            waiting = asyncio.ensure_future(pool.call(pack_command("ECHO", "second")))
            with pytest.raises(RespTimeoutError) as first:
                await stalled
            assert first.value.sent is True
            with pytest.raises(RespTimeoutError) as second:
                await waiting
            assert second.value.sent is False
            assert not pool._idle  # the connection that timed out was dropped
            assert await admin.call(pack_command("CLIENT", "UNPAUSE")) == b"OK"
            assert await pool.call(pack_command("ECHO", "third")) == b"third"
        finally:
            pool.close()
            admin.close()

    asyncio.run(body())


def test_redis_py_path_for_tls_urls_runs_the_same_commands_and_scripts(
    redis_url: str, redis_server: RedisServer
) -> None:
    """``ssl`` URLs send every command on a redis-py connection instead (the lean
    client has no TLS). The fixture has no TLS, so the store is built here on the link
    an ssl URL gets, over plain TCP: the commands, their error mapping, the scripts,
    the NOSCRIPT fallback after ``SCRIPT FLUSH`` and the replay must work."""
    url = redis_server.url(3)
    assert isinstance(open_link(parse_url(url + "?ssl=true")), RedisPyLink)

    async def body() -> None:
        link = redis_py_link(url, timeout=5.0, connect_timeout=5.0, max_connections=4)
        store = RedisKeyValueStore(parse_url(url), link)
        try:
            await store.set("plain", "v")
            assert await store.get("plain") == b"v"
            assert await store.incr("n", 2) == 2
            assert await store.zadd("z", {"a": 1.5}) == 1
            assert await store.zrange("z", 0, -1) == [("a", 1.5)]
            with pytest.raises(WrongTypeError):
                await store.incr("z")
            idem = Idempotency(store, policy=IdempotencyPolicy())
            assert isinstance(idem.backend, RedisRecords)
            executions = 0

            async def charge(order: str) -> str:
                nonlocal executions
                executions += 1
                return f"charged {order}"

            call = idempotent(idem, key=lambda order: order, client="shop")(charge)
            assert await call("o-1") == "charged o-1"
            await store.native.script_flush()  # the next EVALSHA gets NOSCRIPT
            assert await call("o-1") == "charged o-1"  # replayed through EVAL
            assert await call("o-2") == "charged o-2"
            assert executions == 2
            record = await idem.get("o-1", client="shop")
            assert record is not None and record.state == "completed"
            assert record.result == {"value": "charged o-1"}
        finally:
            await store.close()

    asyncio.run(body())


def test_lean_pool_down_is_unavailable_before_sending() -> None:
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def body() -> None:
        pool = RespPool("127.0.0.1", port, timeout=2.0)
        try:
            with pytest.raises(RespConnectionError) as info:
                await pool.call(pack_command("PING"))
            assert info.value.sent is False
        finally:
            pool.close()

    asyncio.run(body())


def test_store_down_maps_to_store_unavailable(redis_url: str, redis_server: RedisServer) -> None:
    async def body() -> None:
        store = await open_store(redis_server.url(0), model="kv")
        try:
            idem = Idempotency(store, policy=IdempotencyPolicy())
            call = idempotent(idem, key=lambda n: "k", client="c")(asyncio.sleep)
            redis_server.stop()
            try:
                with pytest.raises(StoreUnavailableError) as info:
                    await call(0)
                assert info.value.outcome is Outcome.DEFINITE  # never reached a server
            finally:
                redis_server.start()
            assert await call(0) is None  # and works again
        finally:
            await store.close()

    asyncio.run(body())


# -- send (callbacks), queueing, cancellation, scripts ----------------------------------


def _port(redis_url: str) -> int:
    return int(redis_url.rsplit(":", 1)[1].split("/")[0])


async def _until(check: Any, what: str, bound: float = 10.0) -> None:
    """Poll ``check()`` (sync or async) until true; fail after ``bound`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:  # a bound on the wait, not on speed
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.01)


def test_send_hands_each_reply_to_its_callback_never_from_inside_send(redis_url: str) -> None:
    async def body() -> None:
        pool = RespPool("127.0.0.1", _port(redis_url))
        try:
            assert await pool.call(pack_command("SET", "k", "v")) == b"OK"
            got: dict[str, tuple[bool, object]] = {}
            inside = True

            def record(tag: str) -> Any:
                return lambda reply: got.setdefault(tag, (inside, reply))

            pool.send(pack_command("GET", "k"), record("get"))
            pool.send(pack_command("LPUSH", "k", "x"), record("wrongtype"))
            pool.send(
                pack_command("EVALSHA", "0" * 40, 0),  # never loaded: the fallback runs
                record("script"),
                lambda: pack_command("EVAL", "return 7", 0),
            )
            inside = False
            await _until(lambda: len(got) == 3, "three replies")
            assert all(not was_inside for was_inside, _ in got.values())
            assert got["get"][1] == b"v"
            assert got["script"][1] == 7
            error = got["wrongtype"][1]
            assert isinstance(error, RespError) and error.message.startswith("WRONGTYPE")

            pool.close()  # a closed pool answers too, but only on a later loop turn
            failed: list[object] = []
            pool.send(pack_command("PING"), failed.append)
            assert failed == []
            await _until(lambda: failed, "the closed pool's answer")
            assert isinstance(failed[0], RespConnectionError) and failed[0].sent is False
        finally:
            pool.close()

    asyncio.run(body())


def test_commands_beyond_the_pool_size_wait_in_order_for_a_connection(redis_url: str) -> None:
    async def body() -> None:
        pool = RespPool("127.0.0.1", _port(redis_url), max_connections=2)
        try:
            replies: dict[int, object] = {}
            for i in range(40):
                pool.send(
                    pack_command("RPUSH", "order", i), lambda r, i=i: replies.setdefault(i, r)
                )
            await _until(lambda: len(replies) == 40, "forty replies")
            assert len(pool._live) <= 2  # never more connections than allowed
            # each callback got its own command's reply: RPUSH answers the new length
            assert sorted(replies.values()) == list(range(1, 41))  # type: ignore[type-var]
            pushed = await pool.call(pack_command("LRANGE", "order", 0, -1))
            assert isinstance(pushed, list) and len(pushed) == 40
        finally:
            pool.close()

    asyncio.run(body())


@contextlib.asynccontextmanager
async def _one_connection_held_by_blpop(
    redis_url: str,
) -> AsyncIterator[tuple[RespPool, RespPool, asyncio.Future[object]]]:
    """``(admin, pool, blpop)``: ``pool`` has one connection, busy with a BLPOP that
    the server is running (``admin`` releases it with an LPUSH to ``q``)."""
    admin = RespPool("127.0.0.1", _port(redis_url))
    pool = RespPool("127.0.0.1", _port(redis_url), timeout=30.0, max_connections=1)

    async def blocked() -> bool:
        listing = await admin.call(pack_command("CLIENT", "LIST"))
        assert isinstance(listing, bytes)
        return b"cmd=blpop" in listing

    try:
        blpop = asyncio.ensure_future(pool.call(pack_command("BLPOP", "q", 20)))
        await _until(blocked, "the BLPOP holds the only connection")
        yield admin, pool, blpop
    finally:
        pool.close()
        admin.close()


def test_a_call_cancelled_while_waiting_for_a_connection_is_never_sent(redis_url: str) -> None:
    async def body() -> None:
        async with _one_connection_held_by_blpop(redis_url) as (admin, pool, blpop):
            waiting = asyncio.ensure_future(pool.call(pack_command("INCR", "n")))
            await asyncio.sleep(0)  # one turn: the INCR is queued for the connection
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert await admin.call(pack_command("LPUSH", "q", "x")) == 1
            assert await blpop == [b"q", b"x"]
            assert await pool.call(pack_command("PING")) == b"PONG"
            assert await admin.call(pack_command("GET", "n")) is None  # INCR never ran

    asyncio.run(body())


def test_a_call_cancelled_after_sending_leaves_its_reply_to_nobody_else(redis_url: str) -> None:
    async def body() -> None:
        async with _one_connection_held_by_blpop(redis_url) as (admin, pool, blpop):
            blpop.cancel()
            with pytest.raises(asyncio.CancelledError):
                await blpop
            echo = asyncio.ensure_future(pool.call(pack_command("ECHO", "mine")))
            assert await admin.call(pack_command("LPUSH", "q", "x")) == 1
            # the BLPOP's late reply is read and dropped: the ECHO gets its own
            assert await echo == b"mine"
            assert await admin.call(pack_command("LLEN", "q")) == 0  # the BLPOP did pop it

    asyncio.run(body())


def test_script_packs_evalsha_with_an_eval_fallback(redis_url: str) -> None:
    script = RespScript("return {KEYS[1], ARGV[1], #ARGV}")

    async def body() -> None:
        pool = RespPool("127.0.0.1", _port(redis_url))
        try:
            assert await pool.call(pack_command("SCRIPT", "FLUSH")) == b"OK"
            command, fallback = script.pack([b"key"], ["arg", 2.5])
            with pytest.raises(RespError, match="NOSCRIPT"):
                await pool.call(command)  # EVALSHA alone: the server does not have it
            # with the fallback the same call goes as EVAL (which caches the script)
            assert await pool.call(command, fallback) == [b"key", b"arg", 2]
            assert await pool.call(command) == [b"key", b"arg", 2]
            loaded = await pool.call(pack_command("SCRIPT", "LOAD", script.body))
            assert loaded == script.sha.encode()  # the SHA-1 the server computes
        finally:
            pool.close()

    asyncio.run(body())
