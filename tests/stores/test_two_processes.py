"""Two processes change one embedded store at the same time, schema and data alike.

For every embedded backend, two real processes (``tests/stores/twoproc_worker.py``)
start together on one file or directory and create, write and drop things, some
their own and some shared. Each operation must either succeed and stay, or be
refused with a ``MultistoreError`` (another process holds the file, or the lock on
it); nothing else may escape. Afterwards a fresh store must hold every acknowledged
change that was not undone later by the same process.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from multistore.stores import open_store
from tests.stores.twoproc_worker import MIGRATIONS, ROUNDS, T0

ROOT = Path(__file__).resolve().parents[2]
TAGS = ("a", "b")
Line = dict[str, Any]


def run_pair(backend: str, url: str, tmp_path: Path) -> dict[str, list[Line]]:
    """Start both workers, let them go at once, and return each one's lines."""
    go = tmp_path / f"go-{backend}"
    procs = {
        tag: subprocess.Popen(
            [sys.executable, "-m", "tests.stores.twoproc_worker", backend, url, tag, str(go)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in TAGS
    }
    go.touch()
    lines: dict[str, list[Line]] = {}
    for tag, proc in procs.items():
        out, err = proc.communicate(timeout=90)
        parsed = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        raw = [line["raw"] for line in parsed if "raw" in line]
        assert not raw and proc.returncode == 0, f"worker {tag} failed:\n{raw}\n{err}"
        lines[tag] = parsed
    return lines


def _acked(lines: list[Line], op: str) -> list[list[Any]]:
    return [line["args"] for line in lines if line["op"] == op and line["ok"]]


def _check_refusals(lines: dict[str, list[Line]], allowed: set[str]) -> None:
    """Every refusal is one of the expected kinds, and definite (nothing was written)."""
    for tag, tagged in lines.items():
        for line in tagged:
            if not line["ok"]:
                assert line["error"] in allowed, f"{tag}: unexpected refusal {line}"
                assert line["definite"], f"{tag}: a refusal that may have written: {line}"


def _check(url: str, model: str, check: Callable[[Any], Awaitable[None]]) -> None:
    async def main() -> None:
        store = await open_store(url, model=model)
        try:
            await check(store)
        finally:
            await store.close()

    asyncio.run(main())


def test_tantivy_index_definitions_and_documents_survive(tmp_path: Path) -> None:
    url = f"tantivy:///{tmp_path / 'search'}"
    lines = run_pair("tantivy", url, tmp_path)
    # Writing into the shared index while the other process holds its writer is refused.
    _check_refusals(lines, {"StoreUnavailableError"})
    for tag in TAGS:
        created = {args[0] for args in _acked(lines[tag], "create_index")}
        assert created >= {f"{tag}{i}" for i in range(ROUNDS)}, "a create was refused"

    async def check(store: Any) -> None:
        names = set(await store.indexes())
        for tag, tagged in lines.items():
            dropped = {args[0] for args in _acked(tagged, "drop_index")}
            created = {args[0] for args in _acked(tagged, "create_index")}
            assert created - dropped <= names, f"{tag}: acknowledged creates were lost"
            assert not (dropped & names), f"{tag}: a dropped index came back"
            for name, doc_id in _acked(tagged, "index"):
                if name not in dropped:
                    assert await store.get(name, doc_id) is not None, (name, doc_id)

    _check(url, "search", check)


def test_sqlite_key_value(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'kv.db'}"
    lines = run_pair("sqlite-kv", url, tmp_path)
    _check_refusals(lines, set())

    async def check(store: Any) -> None:
        incrs = sum(len(_acked(tagged, "incr")) for tagged in lines.values())
        assert await store.get("counter") == str(incrs).encode()
        for tagged in lines.values():
            deleted = {args[0] for args in _acked(tagged, "delete")}
            for key, value in _acked(tagged, "set"):
                expected = None if key in deleted else value.encode()
                assert await store.get(key) == expected, key
            for _, member, score in _acked(tagged, "zadd"):
                assert await store.zscore("board", member) == score

    _check(url, "kv", check)


def test_sqlite_document(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'doc.db'}"
    lines = run_pair("sqlite-document", url, tmp_path)
    _check_refusals(lines, set())

    async def check(store: Any) -> None:
        names = set(await store.collections())
        indexed = {(info.collection, info.path) for info in await store.indexes("shared")}
        assert indexed == {("shared", "a.b")}
        for tag, tagged in lines.items():
            dropped = {args[0] for args in _acked(tagged, "drop_collection")}
            created = {args[0] for args in _acked(tagged, "create_collection")}
            assert created - dropped <= names, f"{tag}: acknowledged collections were lost"
            for collection, path in _acked(tagged, "create_index"):
                if collection not in dropped:
                    paths = {info.path for info in await store.indexes(collection)}
                    assert path in paths, (collection, path)
            for _, doc_id in _acked(tagged, "insert"):
                assert await store.get("shared", doc_id) is not None, doc_id
            for collection, ids in _acked(tagged, "insert_many"):
                if collection not in dropped:
                    for doc_id in ids:
                        assert await store.get(collection, doc_id) is not None, doc_id

    _check(url, "document", check)


def test_sqlite_widecolumn(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'wide.db'}"
    lines = run_pair("sqlite-widecolumn", url, tmp_path)
    _check_refusals(lines, set())

    async def check(store: Any) -> None:
        tables = set(await store.tables())
        for tag, tagged in lines.items():
            created = {args[0] for args in _acked(tagged, "create_table")}
            assert created <= tables, f"{tag}: acknowledged tables were lost"
            rows = await store.select("shared", {"p": tag})
            assert [r["c"] for r in rows] == [a[2] for a in _acked(tagged, "upsert")]
            for table, part, cs in _acked(tagged, "upsert_many"):
                assert [r["c"] for r in await store.select(table, {"p": part})] == cs

    _check(url, "widecolumn", check)


def test_sqlite_relational_and_its_migrations(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'rel.db'}"
    lines = run_pair("sqlite-relational", url, tmp_path)
    _check_refusals(lines, set())

    async def check(store: Any) -> None:
        applied = await store.applied_migrations()
        assert [m.version for m in applied] == [m.version for m in MIGRATIONS]
        ids = {row["id"] for row in await store.fetch_all("SELECT id FROM items")}
        for tagged in lines.values():
            for (batch,) in _acked(tagged, "executemany"):
                assert set(batch) <= ids
            for (table,) in _acked(tagged, "create_table"):
                assert await store.fetch_val(f"SELECT count(*) FROM {table}") == 0

    _check(url, "relational", check)


def test_ladybug(tmp_path: Path) -> None:
    url = f"ladybug:///{tmp_path / 'graph.lbdb'}"
    lines = run_pair("ladybug", url, tmp_path)
    # The other process may hold the database file: opening it is refused.
    _check_refusals(lines, {"StoreUnavailableError"})
    assert any(_acked(tagged, "create_node") for tagged in lines.values())

    async def check(store: Any) -> None:
        for tagged in lines.values():
            for label, key in _acked(tagged, "create_node"):
                assert await store.get_node(label, key) is not None, (label, key)
            for label, key, _, to_key in _acked(tagged, "create_relationship"):
                found = [n["key"] for n in await store.neighbors(label, key, "LINKS")]
                assert found == [to_key]

    _check(url, "graph", check)


def test_duckdb(tmp_path: Path) -> None:
    url = f"duckdb:///{tmp_path / 'metrics.duckdb'}"
    lines = run_pair("duckdb", url, tmp_path)
    _check_refusals(lines, {"StoreUnavailableError"})
    assert any(_acked(tagged, "write") for tagged in lines.values())
    start, end = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)

    async def check(store: Any) -> None:
        for tagged in lines.values():
            for measurement, host, offset in _acked(tagged, "write"):
                points = await store.query(measurement, start=start, end=end, tags={"host": host})
                assert T0 + timedelta(seconds=offset) in {p.time for p in points}

    _check(url, "timeseries", check)
