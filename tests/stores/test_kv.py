"""The key-value conformance suite: every test runs against every kv backend.

Backends: SQLite (a file under tmp_path), Redis and Redis Cluster (real throwaway
servers), each through the async API and, where it has a sync backend, the sync API
(:mod:`tests.stores.apis`). Each test opens its own store inside ``asyncio.run`` so no
pool crosses event loops.
"""

from __future__ import annotations

import asyncio
import math
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from multistore.errors import (
    InvalidValueError,
    MultistoreError,
    StoreTimeoutError,
    StoreUnavailableError,
    UsageError,
)
from multistore.stores.kv import KeyValueStore, RateLimit, WrongTypeError
from tests.stores.apis import APIS, open_with

Body = Callable[[KeyValueStore], Awaitable[None]]

_api = "async"  # the API that _open uses, set by the fixtures below


@pytest.fixture(params=APIS)
def api(request: pytest.FixtureRequest) -> Iterator[str]:
    global _api
    _api = request.param
    yield request.param
    _api = "async"


@pytest.fixture(
    params=[
        ("sqlite", "async"),
        ("sqlite", "sync"),
        pytest.param(("redis", "async"), marks=pytest.mark.server),
        pytest.param(("redis", "sync"), marks=pytest.mark.server),
        pytest.param(("redis-cluster", "async"), marks=pytest.mark.server),
    ],
    ids=lambda p: "-".join(p),
)
def kv_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    global _api
    backend, _api = request.param
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'kv.db'}"
    elif backend == "redis-cluster":
        yield str(request.getfixturevalue("redis_cluster_url"))
    else:
        yield str(request.getfixturevalue("redis_url"))
    _api = "async"


async def _open(url: str) -> KeyValueStore:
    store: KeyValueStore = await open_with(_api)(url, model="kv")
    return store


def run(url: str, body: Body) -> None:
    """Open the store at ``url``, run ``body(store)`` and close it, on one event loop."""

    async def main() -> None:
        store = await _open(url)
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


async def wait_until(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    """Poll ``check`` until it is true; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within}s")
        await asyncio.sleep(0.02)


# -- strings ------------------------------------------------------------------------


def test_set_get_overwrite_and_missing(kv_url: str) -> None:
    async def body(s: KeyValueStore) -> None:
        assert await s.get("nope") is None
        await s.set("greeting", "héllo")
        assert await s.get("greeting") == "héllo".encode()
        await s.set("greeting", b"\x00\xffraw")
        assert await s.get("greeting") == b"\x00\xffraw"
        await s.set("empty", b"")
        assert await s.get("empty") == b""

    run(kv_url, body)


def test_seed_session_store(kv_url: str) -> None:
    """The seed's example: session:abc123, JSON, a one-hour TTL, read back."""

    async def body(s: KeyValueStore) -> None:
        session_data = {"user_id": 123, "username": "alice", "roles": ["user", "premium"]}
        await s.set_json("session:abc123", session_data, ttl=3600)
        session = await s.get_json("session:abc123")
        assert session is not None
        assert session["username"] == "alice"
        assert session == session_data
        left = await s.ttl("session:abc123")
        assert left is not None and 3590 < left <= 3600

    run(kv_url, body)


def test_ttl_missing_vs_no_expiry(kv_url: str) -> None:
    async def body(s: KeyValueStore) -> None:
        assert await s.ttl("missing") is None
        await s.set("forever", "x")
        assert await s.ttl("forever") == math.inf
        await s.set("brief", "x", ttl=100)
        left = await s.ttl("brief")
        assert left is not None and 99 < left <= 100
        await s.set("brief", "y")  # a plain set drops the TTL, as Redis SET does
        assert await s.ttl("brief") == math.inf
        assert await s.expire("brief", 50) is True
        left = await s.ttl("brief")
        assert left is not None and 49 < left <= 50
        assert await s.expire("missing", 10) is False
        assert await s.ttl("missing") is None

    run(kv_url, body)


def test_ttl_expiry_removes_key_everywhere(kv_url: str) -> None:
    async def body(s: KeyValueStore) -> None:
        await s.set("short", "v", ttl=0.5)
        assert await s.get("short") == b"v"
        await s.zadd("short-z", {"m": 1.0})
        assert await s.expire("short-z", 0.5)
        await s.set("stays", "v")

        async def gone() -> bool:
            return await s.get("short") is None and await s.zscore("short-z", "m") is None

        await wait_until(gone)
        assert await s.ttl("short") is None
        assert await s.ttl("short-z") is None
        assert await s.scan("short") == []
        assert await s.mget(["short", "stays"]) == [None, b"v"]
        assert await s.delete("short") == 0
        assert await s.set_if_absent("short", "new") is True
        assert await s.zrange("short-z", 0, -1) == []
        assert await s.incr("short-z") == 1  # an expired sorted set is no longer in the way

    run(kv_url, body)


def test_set_if_absent(kv_url: str) -> None:
    async def body(s: KeyValueStore) -> None:
        assert await s.set_if_absent("lock", "a", ttl=30) is True
        assert await s.set_if_absent("lock", "b") is False
        assert await s.get("lock") == b"a"
        left = await s.ttl("lock")
        assert left is not None and 29 < left <= 30
        await s.zadd("z", {"m": 1})
        assert await s.set_if_absent("z", "x") is False  # any kind of value counts

    run(kv_url, body)


def test_compare_and_set(kv_url: str) -> None:
    async def body(s: KeyValueStore) -> None:
        assert await s.compare_and_set("cas", None, "v1", ttl=30) is True  # created
        assert await s.compare_and_set("cas", None, "other") is False  # exists now
        assert await s.compare_and_set("cas", "v0", "other") is False  # not the value
        assert await s.compare_and_set("cas", b"v1", b"v2") is True
        assert await s.get("cas") == b"v2"
        assert await s.ttl("cas") == math.inf  # the TTL is replaced, as set does
        assert await s.compare_and_set("cas", "v2", "v3", ttl=30) is True
        left = await s.ttl("cas")
        assert left is not None and 29 < left <= 30
        assert await s.compare_and_set("missing", "v", "w") is False
        assert await s.get("missing") is None
        # exact bytes: no prefix match, no case folding, binary values
        await s.set("bin", b"\x00\xffab")
        for wrong in [b"\x00\xffa", b"\x00\xffab ", b"\x00\xffAB", b""]:
            assert await s.compare_and_set("bin", wrong, "x") is False
        assert await s.compare_and_set("bin", b"\x00\xffab", b"") is True
        assert await s.get("bin") == b""
        assert await s.compare_and_set("bin", b"", b"full") is True  # empty is a value
        # an expired key is missing
        await s.set("old", "v", ttl=0.05)

        async def gone() -> bool:
            return await s.get("old") is None

        await wait_until(gone)
        assert await s.compare_and_set("old", "v", "w") is False
        assert await s.compare_and_set("old", None, "new") is True
        await s.zadd("z", {"m": 1})
        with pytest.raises(WrongTypeError):
            await s.compare_and_set("z", None, "x")
        assert await s.zscore("z", "m") == 1

    run(kv_url, body)


def test_compare_and_set_lets_one_writer_win(kv_url: str) -> None:
    """Writers that read the same value and swap it: exactly one wins each round."""

    async def main() -> None:
        stores = [await _open(kv_url) for _ in range(2)]
        try:
            await stores[0].set("counter", "0")
            for _ in range(5):
                seen = await stores[0].get("counter")
                assert seen is not None
                new = str(int(seen) + 1)
                won = await asyncio.gather(
                    *(s.compare_and_set("counter", seen, new) for s in stores for _ in range(3))
                )
                assert sum(won) == 1
            assert await stores[1].get("counter") == b"5"
        finally:
            for s in stores:
                await s.close()

    asyncio.run(main())


def test_purge_expired_by_prefix(kv_url: str) -> None:
    async def body(s: KeyValueStore) -> None:
        for key in ["a:1", "a:2", "a%", "ab", "b:1"]:
            await s.set(key, "v", ttl=0.05)
        await s.set("a:live", "v", ttl=30)

        async def expired() -> bool:
            return await s.scan("") == ["a:live"]

        await wait_until(expired)
        redis = kv_url.startswith("redis")  # Redis expires keys itself: nothing to purge
        assert await s.purge_expired("a:") == (0 if redis else 2)
        assert await s.scan("") == ["a:live"]
        assert await s.purge_expired() == (0 if redis else 3)
        assert await s.get("a:live") == b"v"

    run(kv_url, body)


def test_delete_counts_existing_keys_of_any_kind(kv_url: str) -> None:
    async def body(s: KeyValueStore) -> None:
        await s.set("a", "1")
        await s.set("b", "2")
        await s.zadd("z", {"m": 1})
        assert await s.delete() == 0
        assert await s.delete("a", "z", "missing") == 2
        assert await s.mget(["a", "b", "z"]) == [None, b"2", None]
        assert await s.zrange("z", 0, -1) == []
        assert await s.scan("") == ["b"]

    run(kv_url, body)


def test_incr(kv_url: str) -> None:
    async def body(s: KeyValueStore) -> None:
        assert await s.incr("hits") == 1
        assert await s.incr("hits", 41) == 42
        assert await s.incr("hits", -50) == -8
        assert await s.get("hits") == b"-8"
        await s.set("n", "10", ttl=100)
        assert await s.incr("n") == 11
        left = await s.ttl("n")
        assert left is not None and 99 < left <= 100  # incr keeps the TTL
        await s.set("big", str(2**63 - 1))
        with pytest.raises(InvalidValueError):
            await s.incr("big")
        assert await s.get("big") == str(2**63 - 1).encode()

    run(kv_url, body)


def test_incr_is_atomic_under_concurrency(kv_url: str) -> None:
    async def main() -> None:
        stores = [await _open(kv_url) for _ in range(3)]
        try:
            await asyncio.gather(*(s.incr("counter") for s in stores for _ in range(30)))
            assert await stores[0].get("counter") == b"90"
        finally:
            for s in stores:
                await s.close()

    asyncio.run(main())


def test_mget(kv_url: str) -> None:
    async def body(s: KeyValueStore) -> None:
        await s.set("a", "1")
        await s.set("c", b"3")
        await s.zadd("z", {"m": 1})
        assert await s.mget([]) == []
        assert await s.mget(["a", "b", "c", "z", "a"]) == [b"1", None, b"3", None, b"1"]

    run(kv_url, body)


def test_scan_prefix_is_literal(kv_url: str) -> None:
    keys = ["a%b", "a_b", "axb", "a*1", "a?1", "a[1]", "a]1", "a\\1", "ab", "b", "é:1", "é:2"]

    async def body(s: KeyValueStore) -> None:
        for key in keys:
            await s.set(key, "v")
        await s.zadd("a_z", {"m": 1})
        assert await s.scan("") == sorted([*keys, "a_z"])
        assert await s.scan("a%") == ["a%b"]
        assert await s.scan("a_") == ["a_b", "a_z"]
        assert await s.scan("a*") == ["a*1"]
        assert await s.scan("a?") == ["a?1"]
        assert await s.scan("a[") == ["a[1]"]
        assert await s.scan("a]") == ["a]1"]
        assert await s.scan("a\\") == ["a\\1"]
        assert await s.scan("é:") == ["é:1", "é:2"]
        assert await s.scan("zzz") == []

    run(kv_url, body)


def test_prefix_option_namespaces_keys(kv_url: str) -> None:
    sep = "&" if "?" in kv_url else "?"

    async def main() -> None:
        shop = await _open(f"{kv_url}{sep}prefix=shop:")
        blog = await _open(f"{kv_url}{sep}prefix=blog*:")
        try:
            await shop.set("user:1", "s")
            await blog.set("user:1", "b")
            await shop.zadd("board", {"x": 1})
            assert await shop.get("user:1") == b"s"
            assert await blog.get("user:1") == b"b"
            assert await shop.scan("") == ["board", "user:1"]
            assert await blog.scan("user") == ["user:1"]
            assert await blog.delete("board") == 0
            assert await shop.zscore("board", "x") == 1.0
        finally:
            await shop.close()
            await blog.close()

    asyncio.run(main())


def test_json_helpers(kv_url: str) -> None:
    async def body(s: KeyValueStore) -> None:
        assert await s.get_json("nope") is None
        await s.set_json("doc", {"a": [1, 2.5, None, True], "ü": "ß"})
        assert await s.get_json("doc") == {"a": [1, 2.5, None, True], "ü": "ß"}
        await s.set("raw", b"not json {")
        with pytest.raises(InvalidValueError):
            await s.get_json("raw")

    run(kv_url, body)


# -- sorted sets --------------------------------------------------------------------


def test_leaderboard(kv_url: str) -> None:
    async def body(s: KeyValueStore) -> None:
        assert await s.zadd("lb", {"alice": 100, "bob": 250, "carol": 250, "dave": 50}) == 4
        assert await s.zadd("lb", {"alice": 120, "erin": 10}) == 1  # alice updated
        assert await s.zincrby("lb", "dave", 500) == 550.0
        assert await s.zincrby("lb", "frank", 1.5) == 1.5
        top3 = await s.zrange("lb", 0, 2, desc=True)
        assert top3 == [("dave", 550.0), ("carol", 250.0), ("bob", 250.0)]
        assert await s.zrange("lb", 0, -1) == [
            ("frank", 1.5),
            ("erin", 10.0),
            ("alice", 120.0),
            ("bob", 250.0),
            ("carol", 250.0),
            ("dave", 550.0),
        ]
        assert await s.zrange("lb", -2, -1) == [("carol", 250.0), ("dave", 550.0)]
        assert await s.zrange("lb", 4, 100) == [("carol", 250.0), ("dave", 550.0)]
        assert await s.zrange("lb", 3, 1) == []
        assert await s.zrange("lb", -100, 0) == [("frank", 1.5)]
        assert await s.zrank("lb", "dave", desc=True) == 0
        assert await s.zrank("lb", "bob") == 3
        assert await s.zrank("lb", "bob", desc=True) == 2
        assert await s.zrank("lb", "nobody") is None
        assert await s.zrank("nolb", "x") is None
        assert await s.zscore("lb", "alice") == 120.0
        assert await s.zscore("lb", "nobody") is None
        assert await s.zrem("lb", "alice", "nobody") == 1
        assert await s.zrem("lb") == 0
        assert await s.zscore("lb", "alice") is None
        assert await s.zrem("lb", "bob", "carol", "dave", "erin", "frank") == 5
        # a sorted set without members is gone, as in Redis
        assert await s.ttl("lb") is None
        assert await s.scan("lb") == []
        await s.set("lb", "now a string")
        assert await s.get("lb") == b"now a string"

    run(kv_url, body)


def test_sorted_set_infinite_scores(kv_url: str) -> None:
    async def body(s: KeyValueStore) -> None:
        await s.zadd("z", {"low": -math.inf, "mid": 0.0, "high": math.inf})
        assert await s.zrange("z", 0, -1) == [("low", -math.inf), ("mid", 0.0), ("high", math.inf)]
        with pytest.raises(InvalidValueError):
            await s.zincrby("z", "high", -math.inf)  # inf - inf is NaN
        assert await s.zscore("z", "high") == math.inf

    run(kv_url, body)


def test_wrong_type_is_a_clear_error_and_changes_nothing(kv_url: str) -> None:
    async def body(s: KeyValueStore) -> None:
        await s.set("str", "v", ttl=100)
        await s.zadd("zs", {"m": 2.0})
        string_ops = [
            s.zadd("str", {"x": 1}),
            s.zincrby("str", "x", 1),
            s.zscore("str", "x"),
            s.zrange("str", 0, -1),
            s.zrank("str", "x"),
            s.zrem("str", "x"),
            s.rate_limit("str", 5, 10),
        ]
        for op in string_ops:
            with pytest.raises(WrongTypeError):
                await op
        for op in [s.get("zs"), s.incr("zs")]:
            with pytest.raises(WrongTypeError):
                await op
        assert issubclass(WrongTypeError, MultistoreError)
        assert await s.get("str") == b"v"
        left = await s.ttl("str")
        assert left is not None and left > 99
        assert await s.zrange("zs", 0, -1) == [("m", 2.0)]

    run(kv_url, body)


# -- rate limiter -------------------------------------------------------------------


def test_rate_limiter_counts_down_then_refuses(kv_url: str) -> None:
    async def body(s: KeyValueStore) -> None:
        results = [await s.rate_limit("rl:alice", 5, 60) for _ in range(7)]
        assert [r.allowed for r in results] == [True] * 5 + [False] * 2
        assert [r.remaining for r in results] == [4, 3, 2, 1, 0, 0, 0]
        assert all(r.retry_after == 0.0 for r in results[:5])
        assert all(0 < r.retry_after <= 60 for r in results[5:])
        other = await s.rate_limit("rl:bob", 5, 60)
        assert other == RateLimit(allowed=True, remaining=4, retry_after=0.0)
        left = await s.ttl("rl:alice")
        assert left is not None and 0 < left <= 60  # the limiter's key cleans itself up

    run(kv_url, body)


def test_rate_limiter_window_slides(kv_url: str) -> None:
    async def body(s: KeyValueStore) -> None:
        assert (await s.rate_limit("rl", 2, 1.0)).allowed
        assert (await s.rate_limit("rl", 2, 1.0)).allowed
        refused = await s.rate_limit("rl", 2, 1.0)
        assert not refused.allowed and 0 < refused.retry_after <= 1.0

        async def allowed_again() -> bool:
            return (await s.rate_limit("rl", 2, 1.0)).allowed

        await wait_until(allowed_again)

    run(kv_url, body)


def test_rate_limiter_is_atomic_across_clients(kv_url: str) -> None:
    async def main() -> None:
        stores = [await _open(kv_url) for _ in range(3)]
        try:
            results = await asyncio.gather(
                *(s.rate_limit("rl:burst", 7, 60) for s in stores for _ in range(10))
            )
            assert sum(r.allowed for r in results) == 7
            assert sorted(r.remaining for r in results if r.allowed) == list(range(7))
        finally:
            for s in stores:
                await s.close()

    asyncio.run(main())


# -- bad input and injection --------------------------------------------------------


def test_bad_input_raises_and_leaves_data_intact(kv_url: str) -> None:
    async def body(s: KeyValueStore) -> None:
        await s.set("keep", "original", ttl=100)
        await s.set("n", "5")
        await s.zadd("z", {"m": 1.0})
        bad: list[Awaitable[Any]] = [
            s.set("", "x"),
            s.set(42, "x"),  # type: ignore[arg-type]
            s.set("keep", 42),  # type: ignore[arg-type]
            s.set("keep", None),  # type: ignore[arg-type]
            s.set("keep", "x", ttl=0),
            s.set("keep", "x", ttl=-1),
            s.set("keep", "x", ttl=math.nan),
            s.set("keep", "x", ttl=math.inf),
            s.set("keep", "\ud800"),
            s.set_json("keep", {"x": math.nan}),
            s.set_json("keep", {"x": math.inf}),
            s.set_json("keep", {"x": object()}),
            s.set_if_absent("", "x"),
            s.expire("keep", 0),
            s.incr("n", 1.5),  # type: ignore[arg-type]
            s.incr("n", True),
            s.incr("n", 2**64),
            s.incr("keep"),  # not an integer
            s.zadd("z", {"m": math.nan}),
            s.zadd("z", {"m": "high"}),  # type: ignore[dict-item]
            s.zadd("z", {1: 2.0}),  # type: ignore[dict-item]
            s.zincrby("z", "m", math.nan),
            s.zrange("z", 0, 1.5),  # type: ignore[arg-type]
            s.rate_limit("rl", 0, 10),
            s.rate_limit("rl", 5, 0),
            s.mget("keep"),
            s.delete("keep", ""),
            s.scan(None),  # type: ignore[arg-type]
        ]
        for op in bad:
            with pytest.raises(InvalidValueError):
                await op
        assert await s.get("keep") == b"original"
        left = await s.ttl("keep")
        assert left is not None and left > 99
        assert await s.get("n") == b"5"
        assert await s.zrange("z", 0, -1) == [("m", 1.0)]
        assert await s.scan("") == ["keep", "n", "z"]

    run(kv_url, body)


INJECTIONS = [
    "*",
    "%",
    "_",
    "'; DROP TABLE multistore_kv; --",
    '" OR 1=1 --',
    "redis.call('FLUSHALL')",
    "]] .. redis.call('DEL', KEYS[1]) .. [[",
    "KEYS *\r\nFLUSHALL\r\n",
    "$gt",
    "\x00nul",
]


def test_injection_attempts_are_stored_as_data(kv_url: str) -> None:
    async def body(s: KeyValueStore) -> None:
        await s.set("canary", "alive")
        for text in INJECTIONS:
            await s.set(text, text)
            await s.zadd("board", {text: 1.0})
            await s.rate_limit(text + ":rl", 3, 60)
        for text in INJECTIONS:
            assert await s.get(text) == text.encode()
        assert await s.mget(INJECTIONS) == [t.encode() for t in INJECTIONS]
        assert {m for m, _ in await s.zrange("board", 0, -1)} == set(INJECTIONS)
        assert await s.get("canary") == b"alive"
        assert await s.scan("*") == ["*", "*:rl"]
        assert await s.scan("%") == ["%", "%:rl"]
        expected = sorted({*INJECTIONS, *(t + ":rl" for t in INJECTIONS), "canary", "board"})
        assert await s.scan("") == expected

    run(kv_url, body)


# -- a stateful model test: every backend agrees with a dict ------------------------

KEYS = st.sampled_from(["a", "b", "a*", "a%b", "ab", "é", "k:1"])
MEMBERS = st.sampled_from(["x", "y", "z", "é", "x*"])
VALUES = st.one_of(
    st.sampled_from([b"0", b"1", b"-5", b"007", b"+1", b" 1", b"-0", b"9223372036854775807"]),
    st.binary(max_size=4),
)
SCORES = st.one_of(
    st.integers(-3, 3).map(float), st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
)
INT_RE = re.compile(r"0|-?[1-9][0-9]{0,18}")


def _model_int(value: bytes) -> int | None:
    text = value.decode("latin-1")
    if not INT_RE.fullmatch(text):
        return None
    number = int(text)
    return number if -(2**63) <= number < 2**63 else None


class KVMachine(RuleBasedStateMachine):
    """Drives a store and a plain dict with the same operations; they must agree."""

    url: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        sep = "&" if "?" in self.url else "?"
        # A fresh namespace per example: no leftovers from earlier examples.
        url = f"{self.url}{sep}prefix=sm{uuid.uuid4().hex[:8]}:"
        self.store = self.runner.run(_open(url))
        self.model: dict[str, bytes | dict[str, float]] = {}

    def teardown(self) -> None:
        try:
            self.runner.run(self.store.close())
        finally:
            self.runner.close()

    def do(self, coro: Awaitable[Any]) -> Any:
        async def wrap() -> Any:
            return await coro

        return self.runner.run(wrap())

    @rule(key=KEYS, value=VALUES)
    def set(self, key: str, value: bytes) -> None:
        self.do(self.store.set(key, value))
        self.model[key] = value

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        held = self.model.get(key)
        if isinstance(held, dict):
            with pytest.raises(WrongTypeError):
                self.do(self.store.get(key))
        else:
            assert self.do(self.store.get(key)) == held

    @rule(keys=st.lists(KEYS, max_size=3))
    def delete(self, keys: list[str]) -> None:
        expected = len({k for k in keys if k in self.model})
        assert self.do(self.store.delete(*keys)) == expected
        for k in keys:
            self.model.pop(k, None)

    @rule(key=KEYS, amount=st.one_of(st.integers(-10, 10), st.integers(-(2**63), 2**63 - 1)))
    def incr(self, key: str, amount: int) -> None:
        held = self.model.get(key, b"0")
        if isinstance(held, dict):
            with pytest.raises(WrongTypeError):
                self.do(self.store.incr(key, amount))
            return
        current = _model_int(held)
        if current is None or not -(2**63) <= current + amount < 2**63:
            with pytest.raises(InvalidValueError):
                self.do(self.store.incr(key, amount))
            return
        assert self.do(self.store.incr(key, amount)) == current + amount
        self.model[key] = str(current + amount).encode()

    @rule(key=KEYS, value=VALUES)
    def set_if_absent(self, key: str, value: bytes) -> None:
        stored = self.do(self.store.set_if_absent(key, value))
        assert stored == (key not in self.model)
        if stored:
            self.model[key] = value

    @rule(keys=st.lists(KEYS, max_size=4))
    def mget(self, keys: list[str]) -> None:
        expected = [v if isinstance(v, bytes) else None for v in map(self.model.get, keys)]
        assert self.do(self.store.mget(keys)) == expected

    @rule(prefix=st.sampled_from(["", "a", "a*", "a%", "é", "k:", "zz"]))
    def scan(self, prefix: str) -> None:
        assert self.do(self.store.scan(prefix)) == sorted(
            k for k in self.model if k.startswith(prefix)
        )

    @rule(key=KEYS, mapping=st.dictionaries(MEMBERS, SCORES, max_size=3))
    def zadd(self, key: str, mapping: dict[str, float]) -> None:
        held = self.model.get(key)
        if isinstance(held, bytes) and mapping:  # an empty mapping is a no-op, never an error
            with pytest.raises(WrongTypeError):
                self.do(self.store.zadd(key, mapping))
            return
        zset = held if isinstance(held, dict) else {}
        expected = len(set(mapping) - set(zset))
        assert self.do(self.store.zadd(key, mapping)) == expected
        if mapping:
            self.model[key] = {**zset, **mapping}

    @rule(key=KEYS, start=st.integers(-5, 5), stop=st.integers(-5, 5), desc=st.booleans())
    def zrange(self, key: str, start: int, stop: int, desc: bool) -> None:
        held = self.model.get(key)
        if isinstance(held, bytes):
            with pytest.raises(WrongTypeError):
                self.do(self.store.zrange(key, start, stop, desc=desc))
            return
        ordered = sorted((held or {}).items(), key=lambda ms: (ms[1], ms[0]), reverse=desc)
        n = len(ordered)
        first = max(0, start + n if start < 0 else start)
        last = min(n - 1, stop + n if stop < 0 else stop)
        expected = ordered[first : last + 1] if first <= last else []
        assert self.do(self.store.zrange(key, start, stop, desc=desc)) == expected

    @invariant()
    def same_keys(self) -> None:
        assert self.do(self.store.scan("")) == sorted(self.model)


def test_state_machine_agrees_with_a_dict(kv_url: str) -> None:
    machine = type("Machine", (KVMachine,), {"url": kv_url})
    run_state_machine_as_test(
        machine, settings=settings(max_examples=25, stateful_step_count=20, deadline=None)
    )


# -- backend-specific ---------------------------------------------------------------


def test_sqlite_persists_and_purges(tmp_path: Path, api: str) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'kv.db'}"

    async def main() -> None:
        s = await _open(url)
        await s.set("kept", "v")
        await s.set("short", "v", ttl=0.1)
        await s.zadd("short-z", {"a": 1, "b": 2})
        await s.expire("short-z", 0.1)
        await s.close()
        s = await _open(url)
        try:
            assert await s.get("kept") == b"v"

            async def expired() -> bool:
                return await s.ttl("short") is None and await s.ttl("short-z") is None

            await wait_until(expired)

            def rows(conn: Any) -> tuple[int, int]:
                keys = conn.execute("SELECT count(*) FROM multistore_kv").fetchone()[0]
                members = conn.execute("SELECT count(*) FROM multistore_kv_zset").fetchone()[0]
                return int(keys), int(members)

            assert await s.run(rows) == (3, 2)  # lazy expiry: still on disk
            assert await s.purge_expired("short-") == 1  # only keys with the prefix
            assert await s.run(rows) == (2, 0)
            assert await s.purge_expired() == 1
            assert await s.run(rows) == (1, 0)
        finally:
            await s.close()
        with pytest.raises(UsageError):
            await s.get("kept")

    asyncio.run(main())


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.server
def test_redis_server_down_is_unavailable_quickly(api: str) -> None:
    # Timeouts far past pytest's per-test timeout: an open that waited one out, instead
    # of taking the refusal at once, would fail the test by timing out.
    url = f"redis://127.0.0.1:{_closed_port()}/0?connect_timeout=3600&timeout=3600"
    with pytest.raises(StoreUnavailableError) as info:
        asyncio.run(_open(url))
    assert info.value.definite  # open failed before anything was sent


@pytest.mark.server
def test_redis_reconnects_after_restart(redis_server: Any, redis_url: str, api: str) -> None:
    async def main() -> None:
        s = await _open(f"{redis_url}?connect_timeout=1&timeout=2")
        try:
            await s.set("before", "1")
            redis_server.stop()
            try:
                with pytest.raises(StoreUnavailableError):
                    await s.get("before")
            finally:
                redis_server.start()
            await s.set("after", "2")  # the same store object works again
            assert await s.get("after") == b"2"
            assert await s.incr("after") == 3
            assert (await s.rate_limit("rl", 1, 60)).allowed
        finally:
            await s.close()

    asyncio.run(main())


@pytest.mark.server
def test_redis_no_answer_is_an_indeterminate_timeout(
    redis_server: Any, redis_url: str, tcp_proxy: Callable[[str, int], Any], api: str
) -> None:
    proxy = tcp_proxy("127.0.0.1", redis_server.port)
    url = f"redis://127.0.0.1:{proxy.port}/0?timeout=0.5&connect_timeout=0.5"

    async def main() -> None:
        s = await _open(url)
        try:
            await s.set("k", "1")
            proxy.blackhole()
            # without the timeout the call would wait for the silent server forever
            with pytest.raises(StoreTimeoutError) as info:
                await s.incr("k")
            assert not info.value.definite  # the incr may have reached the server
            proxy.restore()

            async def answers() -> bool:
                try:
                    return await s.get("k") in (b"1", b"2")
                except StoreTimeoutError:
                    return False

            await wait_until(answers)
        finally:
            await s.close()

    asyncio.run(main())


# -- numbers and nesting beyond every backend's range ---------------------------------


def test_numbers_beyond_range_are_invalid_values_naming_the_argument(kv_url: str) -> None:
    """A TTL, window or score too large for any backend (10**400 does not even fit a
    float) is refused before anything is sent, the same way on every backend, and
    leaves the stored state alone."""

    async def body(s: KeyValueStore) -> None:
        await s.set("k", "v", ttl=100)
        await s.zadd("z", {"m": 1.0})
        calls = [
            ("ttl", s.set("k", "w", ttl=10**400)),
            ("ttl", s.set("k", "w", ttl=1e300)),
            ("ttl", s.set_if_absent("new", "w", ttl=10**400)),
            ("ttl", s.expire("k", 10**400)),
            ("window", s.rate_limit("r", 5, 10**400)),
            ("window", s.rate_limit("r", 5, 1e300)),
            ("rate limit", s.rate_limit("r", 2**64, 10)),
            ("score", s.zadd("z", {"m": 10**400})),
            ("increment", s.zincrby("z", "m", -(10**400))),
        ]
        for name, call in calls:
            with pytest.raises(InvalidValueError, match=name):
                await call
        assert await s.get("k") == b"v"
        assert 0 < (await s.ttl("k") or 0) <= 100
        assert await s.get("new") is None and await s.get("r") is None
        assert await s.zscore("z", "m") == 1.0

    run(kv_url, body)


def test_json_nested_too_deeply_is_an_invalid_value(kv_url: str) -> None:
    """set_json refuses lists nested deeper than 100 levels (as the document store
    does); get_json of a stored value too deep for Python's decoder is an
    InvalidValueError, not a RecursionError."""
    deep: list[Any] = []
    for _ in range(10_000):
        deep = [deep]
    ok: list[Any] = []
    for _ in range(99):
        ok = [ok]

    async def body(s: KeyValueStore) -> None:
        with pytest.raises(InvalidValueError, match="nested deeper than 100"):
            await s.set_json("j", deep)
        assert await s.get("j") is None
        await s.set_json("j", ok)
        assert await s.get_json("j") == ok
        await s.set("raw", "[" * 100_000 + "]" * 100_000)
        with pytest.raises(InvalidValueError, match="nested too deeply"):
            await s.get_json("raw")

    run(kv_url, body)


def test_json_object_keys_must_be_strings_and_far_indexes_mean_the_end(kv_url: str) -> None:
    """JSON would turn the key 1 into "1" (and {1: …, "1": …} into one key): refused.
    A sorted-set index beyond 64 bits means "past that end", as in Redis."""

    async def body(s: KeyValueStore) -> None:
        with pytest.raises(InvalidValueError, match="not a string"):
            await s.set_json("j", {"a": {1: "x", "1": "y"}})
        assert await s.get("j") is None
        await s.zadd("z", {"a": 1.0, "b": 2.0})
        assert await s.zrange("z", -(2**70), 2**70) == [("a", 1.0), ("b", 2.0)]
        assert await s.zrange("z", 2**70, 2**71) == []

    run(kv_url, body)
