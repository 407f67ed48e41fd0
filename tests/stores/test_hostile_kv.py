"""Hostile input against every key-value backend (see ``tests/stores/hostile.py``).

Keys, values, members, scores, TTLs, windows, amounts and JSON documents from the
hostile strategies; every operation is accepted and reads back unchanged, or refused
with a ``MultistoreError`` and changes nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st

from multistore.errors import WrongTypeError
from multistore.stores import open_store
from multistore.stores.kv import KeyValueStore
from tests.stores.hostile import (
    Op,
    anything,
    drive,
    integers,
    mostly,
    numbers,
    plain_text,
    plain_values,
    texts,
    values,
)

CANARY = {"canary": b"alive", "canary:ttl": b"ticking"}
keys = mostly(st.one_of(st.sampled_from(["k", "canary", "z", "j"]), plain_text), texts)
payloads = mostly(st.one_of(st.binary(max_size=16), plain_text), st.one_of(texts, anything))
seconds = mostly(st.one_of(st.none(), st.floats(60, 1e9)), st.one_of(numbers, anything))


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.server)])
def kv_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'kv.db'}"
    return str(request.getfixturevalue("redis_url"))


async def snapshot(store: KeyValueStore) -> dict[str, Any]:
    """Every key with its value and whether it expires; keys due to expire within a
    minute are left out (they may go between two snapshots)."""
    state: dict[str, Any] = {}
    for key in await store.scan(""):
        ttl = await store.ttl(key)
        if ttl is None or ttl < 60:
            continue
        try:
            held: Any = await store.get(key)
        except WrongTypeError:
            held = await store.zrange(key, 0, -1)
        state[key] = (held, math.isinf(ttl))
    return state


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _reads_back(key: Any, value: Any) -> Any:
    async def verify(store: KeyValueStore, _: Any) -> None:
        assert await store.get(key) == _bytes(value)

    return verify


@st.composite
def ops(draw: st.DrawFn) -> Op[KeyValueStore]:
    kind = draw(
        st.sampled_from(
            [
                *("set", "set_if_absent", "get", "delete", "expire", "incr", "mget", "scan"),
                *("zadd", "zincrby", "zrange", "zrank", "zrem", "rate_limit"),
                *("set_json", "get_json"),
            ]
        )
    )
    key = draw(keys)
    if kind == "set":
        value, ttl = draw(payloads), draw(seconds)
        # A TTL shorter than a read takes may end before the value is read back.
        lasts = ttl is None or (isinstance(ttl, int | float) and ttl >= 60)
        check = _reads_back(key, value) if lasts else None
        return Op(kind, lambda s: s.set(key, value, ttl=ttl), check, (key, value, ttl))
    if kind == "set_if_absent":
        value, ttl = draw(payloads), draw(seconds)
        return Op(kind, lambda s: s.set_if_absent(key, value, ttl=ttl), None, (key, value, ttl))
    if kind == "get":
        return Op(kind, lambda s: s.get(key), None, (key,))
    if kind == "delete":
        more = draw(st.lists(keys, max_size=3))
        return Op(kind, lambda s: s.delete(key, *more), None, (key, *more))
    if kind == "expire":
        ttl = draw(seconds)
        return Op(kind, lambda s: s.expire(key, ttl), None, (key, ttl))
    if kind == "incr":
        amount = draw(mostly(st.integers(-(2**63), 2**63 - 1), st.one_of(integers, anything)))

        async def counted(store: KeyValueStore, result: Any) -> None:
            assert isinstance(result, int) and await store.get(key) == str(result).encode()

        return Op(kind, lambda s: s.incr(key, amount), counted, (key, amount))
    if kind == "mget":
        many = draw(st.one_of(st.lists(keys, max_size=4), anything))
        return Op(kind, lambda s: s.mget(many), None, (many,))
    if kind == "scan":
        prefix = draw(st.one_of(texts, anything))
        return Op(kind, lambda s: s.scan(prefix), None, (prefix,))
    if kind == "zadd":
        mapping = draw(
            mostly(
                st.dictionaries(plain_text, st.floats(allow_nan=False), max_size=3),
                st.one_of(
                    st.dictionaries(st.one_of(texts, integers), st.one_of(numbers, anything)),
                    anything,
                ),
            )
        )

        async def scored(store: KeyValueStore, _: Any) -> None:
            for member, score in mapping.items():
                assert await store.zscore(key, member) == float(score)

        return Op(kind, lambda s: s.zadd(key, mapping), scored, (key, mapping))
    if kind == "zincrby":
        member, amount = draw(texts), draw(st.one_of(numbers, anything))
        return Op(kind, lambda s: s.zincrby(key, member, amount), None, (key, member, amount))
    if kind == "zrange":
        start, stop = draw(st.one_of(integers, anything)), draw(st.one_of(integers, anything))
        return Op(kind, lambda s: s.zrange(key, start, stop), None, (key, start, stop))
    if kind == "zrank":
        member = draw(st.one_of(texts, anything))
        return Op(kind, lambda s: s.zrank(key, member), None, (key, member))
    if kind == "zrem":
        members = draw(st.lists(st.one_of(texts, anything), max_size=3))
        return Op(kind, lambda s: s.zrem(key, *members), None, (key, *members))
    if kind == "rate_limit":
        limit, window = draw(st.one_of(integers, anything)), draw(seconds)
        return Op(kind, lambda s: s.rate_limit(key, limit, window), None, (key, limit, window))
    if kind == "set_json":
        value = draw(mostly(plain_values, values))

        async def same_json(store: KeyValueStore, _: Any) -> None:
            assert await store.get_json(key) == json.loads(json.dumps(value))
            assert await store.get_json(key) == value

        return Op(kind, lambda s: s.set_json(key, value), same_json, (key, value))
    return Op(kind, lambda s: s.get_json(key), None, (key,))


def test_hostile_key_value(kv_url: str) -> None:
    async def factory() -> KeyValueStore:
        store = await open_store(kv_url, model="kv")
        assert isinstance(store, KeyValueStore)
        return store

    async def prepare(store: KeyValueStore) -> None:
        await store.set("canary", CANARY["canary"])
        await store.set("canary:ttl", CANARY["canary:ttl"], ttl=3600)
        await store.zadd("canary:z", {"a": 1.0, "b": 2.0})

    stats = drive(factory, ops(), snapshot, prepare=prepare)
    assert stats.accepted and stats.refused
