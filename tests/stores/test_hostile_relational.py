"""Hostile input against every relational backend (see ``tests/stores/hostile.py``).

Parameter values of every awkward kind (NUL, lone surrogates, 64-bit edges and far
beyond, NaN, bytes, containers, naive datetimes, objects), parameter mappings that
are not mappings or miss names, garbage SQL, multi-row calls with one bad row, and a
good row followed by a bad one inside a transaction. Every operation is accepted (each
row it wrote is there) or refused with a ``MultistoreError`` and changes nothing.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st

from multistore.stores import open_store
from multistore.stores.relational import RelationalStore
from tests.stores.hostile import (
    EXAMPLES,
    Op,
    anything,
    drive,
    floats,
    integers,
    mostly,
    plain_text,
    scalars,
    texts,
    values,
)

TABLES = {
    "sqlite": "id TEXT PRIMARY KEY, n INTEGER, f REAL, s TEXT, b BLOB",
    "postgresql": "id TEXT PRIMARY KEY, n BIGINT, f DOUBLE PRECISION, s TEXT, b BYTEA",
    "mariadb": "id VARCHAR(255) PRIMARY KEY, n BIGINT, f DOUBLE, s TEXT, b BLOB",
}
INSERT = "INSERT INTO items (id, n, f, s, b) VALUES (:id, :n, :f, :s, :b)"
ids = mostly(st.uuids().map(lambda u: u.hex[:12]), st.one_of(texts, scalars))
odd = st.one_of(
    scalars,
    values,
    anything,
    st.sampled_from([Decimal("1e400"), Decimal("NaN"), datetime(2024, 1, 1), b"\x00" * 70_000]),
)
rows = st.fixed_dictionaries(
    {
        "id": ids,
        "n": mostly(st.none() | st.integers(-(2**63), 2**63 - 1), st.one_of(integers, odd)),
        "f": mostly(
            st.none() | st.floats(allow_nan=False, allow_infinity=False), st.one_of(floats, odd)
        ),
        "s": mostly(st.none() | plain_text, st.one_of(texts, odd)),
        "b": mostly(st.none() | st.binary(max_size=16), odd),
    }
)
GOOD = {"id": "good", "n": 1, "f": 1.5, "s": "ok", "b": b"\x01"}


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.server),
        pytest.param("mariadb", marks=pytest.mark.server),
    ]
)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def rel_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'rel.db'}"
    fixture = {"postgresql": "postgres_url", "mariadb": "mariadb_url"}[backend]
    return str(request.getfixturevalue(fixture))


async def snapshot(store: RelationalStore) -> list[tuple[Any, ...]]:
    found = await store.fetch_all("SELECT id, n, f, s, b FROM items ORDER BY id")
    return [
        tuple(bytes(v) if isinstance(v, memoryview) else v for v in row.values()) for row in found
    ]


def _present(*batch: dict[str, Any]) -> Any:
    async def verify(store: RelationalStore, _: Any) -> None:
        for row in batch:
            if not isinstance(row["id"], str):  # how another type compares is the SQL's own
                continue
            found = await store.fetch_val(
                "SELECT COUNT(*) FROM items WHERE id = :id", {"id": row["id"]}
            )
            assert found == 1, row["id"]

    return verify


async def _pair(store: RelationalStore, row: dict[str, Any]) -> None:
    """A good row, then ``row``, in one transaction: both or neither."""
    async with store.transaction() as tx:
        await tx.execute(INSERT, {**GOOD, "id": f"pair-{uuid.uuid4().hex}"})
        await tx.execute(INSERT, row)


@st.composite
def ops(draw: st.DrawFn) -> Op[RelationalStore]:
    kind = draw(
        st.sampled_from(["insert", "insert", "executemany", "pair", "select", "params", "sql"])
    )
    if kind == "insert":
        row = draw(rows)
        return Op(kind, lambda s: s.execute(INSERT, row), _present(row), (row,))
    if kind == "executemany":
        batch = draw(st.lists(rows, min_size=1, max_size=4))
        return Op(kind, lambda s: s.executemany(INSERT, batch), _present(*batch), (batch,))
    if kind == "pair":
        row = draw(rows)
        return Op(kind, lambda s: _pair(s, row), None, (row,))
    if kind == "select":
        value = draw(odd)
        sql = draw(
            st.sampled_from(
                ["SELECT * FROM items WHERE id = :v", "SELECT * FROM items WHERE n > :v"]
            )
        )
        return Op(kind, lambda s: s.fetch_all(sql, {"v": value}), None, (sql, value))
    if kind == "params":
        params = draw(st.one_of(anything, st.dictionaries(texts, scalars, max_size=3)))
        return Op(kind, lambda s: s.execute(INSERT, params), None, (params,))
    sql = draw(
        st.one_of(texts, st.sampled_from(["SELECT :x", "SELECT ?", "SELECT 1 WHERE 1 = :a AND :b"]))
    )
    return Op(kind, lambda s: s.fetch_all(sql, {"x": 1, "a": 1, "b": True}), None, (sql,))


def test_hostile_relational(rel_url: str, backend: str) -> None:
    async def factory() -> RelationalStore:
        store = await open_store(rel_url, model="relational")
        assert isinstance(store, RelationalStore)
        return store

    async def prepare(store: RelationalStore) -> None:
        await store.execute(f"CREATE TABLE items ({TABLES[backend]})")
        await store.execute(INSERT, {**GOOD, "id": "canary"})

    # Twice the usual count: calls are cheap, and many are refused as duplicates.
    stats = drive(factory, ops(), snapshot, prepare=prepare, examples=2 * EXAMPLES)
    assert stats.accepted and stats.refused
