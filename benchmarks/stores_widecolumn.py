"""Wide-column single-row and single-partition operations: multistore vs raw sqlite3.

The anchor runs the SQL that :class:`SQLiteWideColumnStore` runs, on a table with the
same layout (``WITHOUT ROWID, STRICT``, primary key ``(sensor_id, ts DESC)``), from
the event-loop thread: what a user who hand-writes the table would do. Ours adds the
schema checks, the worker-thread hop, the TTL filter and the conversion of rows to
dicts with ``datetime`` values.
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from datetime import UTC, datetime, timedelta

from benchmarks._harness import BenchEnv, Row, compare
from multistore.stores import open_store
from multistore.stores.widecolumn import ClusteringColumn, TableSchema, WideColumnStore

SCHEMA = TableSchema(
    "sensor_readings",
    partition_key=("sensor_id",),
    clustering=(ClusteringColumn("ts", "desc"),),
    columns={"sensor_id": "text", "ts": "timestamp", "temperature": "float", "humidity": "float"},
)
RAW_DDL = (
    "CREATE TABLE readings (sensor_id TEXT NOT NULL, ts INTEGER NOT NULL, temperature REAL, "
    "humidity REAL, expires_at REAL, PRIMARY KEY (sensor_id, ts DESC)) WITHOUT ROWID, STRICT"
)
RAW_UPSERT = (
    "INSERT OR REPLACE INTO readings (sensor_id, ts, temperature, humidity, expires_at) "
    "VALUES (?, ?, ?, ?, ?)"
)
RAW_SELECT = (
    "SELECT sensor_id, ts, temperature, humidity FROM readings "
    "WHERE (expires_at IS NULL OR expires_at > ?) AND sensor_id = ? AND ts > ? "
    "ORDER BY ts DESC LIMIT ?"
)
START = datetime(2024, 1, 15, tzinfo=UTC)
PARTITION_ROWS = 50


def _micros(value: datetime) -> int:
    return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


async def cases(env: BenchEnv) -> list[Row]:
    store = await open_store(f"sqlite:///{env.tmp / 'wc-ours.db'}", model="widecolumn")
    assert isinstance(store, WideColumnStore)
    raw = sqlite3.connect(env.tmp / "wc-raw.db", isolation_level=None)
    raw.execute("PRAGMA journal_mode = wal")
    raw.execute("PRAGMA synchronous = normal")
    raw.execute(RAW_DDL)
    try:
        await store.create_table(SCHEMA)
        stamps = [START + timedelta(minutes=i) for i in range(PARTITION_ROWS)]
        await store.upsert_many(
            "sensor_readings",
            [{"sensor_id": "s1", "ts": t, "temperature": 21.5, "humidity": 40.0} for t in stamps],
        )
        raw.executemany(RAW_UPSERT, [("s1", _micros(t), 21.5, 40.0, None) for t in stamps])
        ours_ticks = itertools.count()
        raw_ticks = itertools.count()

        async def ours_upsert() -> None:
            ts = START + timedelta(days=1, seconds=next(ours_ticks))
            await store.upsert(
                "sensor_readings",
                {"sensor_id": "s2", "ts": ts, "temperature": 22.0, "humidity": 41.0},
            )

        def raw_upsert() -> None:
            ts = START + timedelta(days=1, seconds=next(raw_ticks))
            raw.execute(RAW_UPSERT, ("s2", _micros(ts), 22.0, 41.0, None))

        def raw_select() -> list[tuple[object, ...]]:
            return raw.execute(RAW_SELECT, (time.time(), "s1", _micros(START), 100)).fetchall()

        return [
            await compare(
                "widecolumn upsert one row, sqlite",
                ours_upsert,
                raw_upsert,
                "sqlite3 INSERT OR REPLACE",
            ),
            await compare(
                f"widecolumn select one partition ({PARTITION_ROWS} rows), sqlite",
                lambda: store.select(
                    "sensor_readings",
                    {"sensor_id": "s1"},
                    where=[("ts", ">", START)],
                    limit=100,
                ),
                raw_select,
                "sqlite3 SELECT",
            ),
        ]
    finally:
        await store.close()
        raw.close()
