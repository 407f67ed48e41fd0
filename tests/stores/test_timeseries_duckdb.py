"""DuckDB-specific tests of the time-series model: the file, its schema, options."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from multistore.errors import NotFoundError, StoreUnavailableError
from multistore.stores import open_store
from multistore.stores.timeseries import Point, TimeSeriesStore
from multistore.stores.timeseries._duckdb import DuckDBTimeSeriesStore

T0 = datetime(2024, 1, 15, 10, 0, tzinfo=UTC)
FAR_FUTURE = datetime(2200, 1, 1, tzinfo=UTC)


async def _open(url: str) -> TimeSeriesStore:
    store = await open_store(url)
    assert isinstance(store, TimeSeriesStore)
    return store


def test_points_persist_in_the_file_and_the_schema_is_plain_sql(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "metrics.duckdb"

    async def main() -> None:
        store = await _open(f"duckdb:///{path}")
        assert isinstance(store, DuckDBTimeSeriesStore)
        await store.write(Point("cpu", {"host": "a"}, {"usage": 0.5, "cores": 4}, T0))
        await store.close()
        await store.close()
        store = await _open(f"duckdb:///{path}")
        try:
            [point] = await store.query("cpu", start=T0, end=FAR_FUTURE)
            assert point.fields == {"usage": 0.5, "cores": 4}
            conn = store.native
            assert isinstance(conn, duckdb.DuckDBPyConnection)
            rows = conn.execute(
                "SELECT s.measurement, p.field, s.tags['host'], p.value_float, p.value_int, "
                "p.time FROM multistore_ts_points p "
                "JOIN multistore_ts_series s ON s.id = p.series_id ORDER BY p.field"
            ).fetchall()
            assert rows == [
                ("cpu", "cores", "a", None, 4, datetime(2024, 1, 15, 10, 0)),
                ("cpu", "usage", "a", 0.5, None, datetime(2024, 1, 15, 10, 0)),
            ]
            kinds = conn.execute(
                "SELECT field, kind FROM multistore_ts_fields ORDER BY field"
            ).fetchall()
            assert kinds == [("cores", "integer"), ("usage", "float")]
        finally:
            await store.close()

    asyncio.run(main())


def test_memory_store_and_create_false(tmp_path: Path) -> None:
    async def main() -> None:
        store = await _open("duckdb:///:memory:")
        try:
            await store.write(Point("m", {}, {"v": 1.0}, T0))
            assert await store.measurements() == ["m"]
        finally:
            await store.close()
        missing = tmp_path / "missing.duckdb"
        with pytest.raises(NotFoundError, match=r"missing\.duckdb"):
            await _open(f"duckdb:///{missing}?create=false")
        assert not missing.exists()

    asyncio.run(main())


def test_a_file_locked_by_another_process_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "locked.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('ready', flush=True); "
            "sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"

        async def main() -> None:
            with pytest.raises(StoreUnavailableError, match=r"locked\.duckdb"):
                await _open(f"duckdb:///{path}")

        asyncio.run(main())
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
        assert holder.stdout is not None
        holder.stdout.close()


def test_limit_keeps_the_first_points_across_series_with_ties(tmp_path: Path) -> None:
    async def main() -> None:
        store = await _open(f"duckdb:///{tmp_path / 'ties.duckdb'}")
        try:
            await store.write_many(
                Point("m", {"k": k}, {"v": float(i)}, T0 + timedelta(seconds=i // 3))
                for i, k in enumerate("cbacbacba")
            )
            got = await store.query("m", start=T0, end=FAR_FUTURE, limit=4)
            assert [(p.time, p.tags["k"]) for p in got] == [
                (T0, "a"),
                (T0, "b"),
                (T0, "c"),
                (T0 + timedelta(seconds=1), "a"),
            ]
        finally:
            await store.close()

    asyncio.run(main())


def test_rewrites_replace_rows_across_reopen_and_stores(tmp_path: Path) -> None:
    """A point written again replaces its fields, whichever store (fresh or not, on the
    same file) writes it: no duplicate rows."""
    url = f"duckdb:///{tmp_path / 'rw.duckdb'}"

    async def main() -> None:
        first = await _open(url)
        await first.write_many(
            Point("m", {"k": "a"}, {"v": float(i)}, T0 + timedelta(seconds=i)) for i in range(5)
        )
        await first.close()
        second = await _open(url)
        third = await _open(url)  # shares the catalog with `second`
        try:
            await second.write(Point("m", {"k": "a"}, {"v": 100.0}, T0 + timedelta(seconds=2)))
            await third.write(Point("m", {"k": "a"}, {"v": 200.0, "w": 1}, T0))
            await third.write(Point("m", {"k": "a"}, {"v": 300.0}, T0 + timedelta(seconds=9)))
            await second.write(Point("m", {"k": "a"}, {"v": 400.0}, T0 + timedelta(seconds=9)))
            got = await second.query("m", start=T0, end=FAR_FUTURE)
            assert [(p.time - T0, p.fields) for p in got] == [
                (timedelta(0), {"v": 200.0, "w": 1}),
                (timedelta(seconds=1), {"v": 1.0}),
                (timedelta(seconds=2), {"v": 100.0}),
                (timedelta(seconds=3), {"v": 3.0}),
                (timedelta(seconds=4), {"v": 4.0}),
                (timedelta(seconds=9), {"v": 400.0}),
            ]
            assert isinstance(second, DuckDBTimeSeriesStore)
            [(count,)] = second.native.execute(
                "SELECT count(*) FROM multistore_ts_points"
            ).fetchall()
            assert count == 7
        finally:
            await second.close()
            await third.close()

    asyncio.run(main())
