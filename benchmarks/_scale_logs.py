"""The consistency-log cases of ``multistore bench scale``: one step, claim, event or
decision, timed when the log already holds ``size`` entries, on the embedded default
(SQLite). The log is filled by copying one entry written through multistore
(:func:`benchmarks._scale_types.clone_rows`); the raw side writes the same kind of
rows with hand-written SQL into a table of the same size.

Where a log has retention (idempotency :meth:`Idempotency.reap`, outbox
:meth:`Outbox.purge`, 2PC :meth:`DecisionLog.purge_aborts`), the case then runs it
once on the filled log and reports the rows before and after, and the time per row
deleted against a raw ``DELETE`` of the same rows.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks._scale_types import Case, Prepared, Reap, clone_rows, raw_sqlite
from multistore.consistency._idempotency import Idempotency, IdempotencyPolicy
from multistore.consistency._outbox import Outbox
from multistore.consistency._saga import Saga, Step, StepContext
from multistore.consistency._saga_engine import SagaEngine
from multistore.consistency._tpc_log import DecisionLog
from multistore.core import Xid
from multistore.errors import MultistoreError
from multistore.stores import open_store
from multistore.stores.kv import KeyValueStore
from multistore.stores.relational import RelationalStore

PAYLOAD = '{"order":42,"amount":1999,"currency":"EUR"}'


def _count(path: Path, table: str) -> int:
    conn = raw_sqlite(path)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


def _reaper(
    table: str,
    reap: Callable[[Prepared], Awaitable[int]],
    raw_delete: str,
    raw_cutoff: Callable[[], float],
) -> Reap:
    """A reap step: run ``reap`` on our filled log (its file is ``state["path"]``) and
    ``raw_delete`` on the raw side; the rows before and after, the time per row."""

    async def step(ours: Prepared, raw: Prepared) -> dict[str, Any]:
        before = _count(ours.state["path"], table)
        error = None
        start = time.perf_counter()
        try:
            deleted = await reap(ours)
        except MultistoreError as exc:  # reported in the row: what a user would meet
            error, deleted = f"{type(exc).__name__}: {exc}", 0
        middle = time.perf_counter()
        raw.state["conn"].execute(raw_delete, (raw_cutoff(),))
        end = time.perf_counter()
        after = _count(ours.state["path"], table)
        per = max(deleted, before - after, 1) if error is None else max(before - 1, 1)
        result = {
            "rows_before": before,
            "rows_after": after,
            "reap_us_per_row": round((middle - start) / per * 1e6, 3),
            "raw_reap_us_per_row": round((end - middle) / per * 1e6, 3),
        }
        if error is not None:
            result["reap_error"] = error
        return result

    return step


async def _relational(path: Path) -> RelationalStore:
    store = await open_store(f"sqlite:///{path}", model="relational")
    assert isinstance(store, RelationalStore)
    return store


# -- saga log: run a one-step saga ------------------------------------------------------


async def _step(ctx: StepContext) -> int:
    return 1


SAGA = Saga("scale", [Step("charge", _step)])


async def saga_ours(size: int, folder: Path) -> Prepared:
    path = folder / "sagas-ours.db"
    store = await _relational(path)
    engine = SagaEngine(store, [SAGA])
    await engine.__aenter__()
    await engine.start(SAGA, {"order": 0}, saga_id="template")
    loader = raw_sqlite(path)
    clone_rows(loader, "multistore_sagas", "saga_id = 'template'", size, {"saga_id": "'c' || i"})
    clone_rows(
        loader, "multistore_saga_steps", "saga_id = 'template'", size, {"saga_id": "'c' || i"}
    )
    loader.close()

    async def close() -> None:
        await engine.__aexit__(None, None, None)
        await store.close()

    return Prepared(lambda: engine.start(SAGA, {"order": 1}), close)


async def saga_raw(size: int, folder: Path) -> Prepared:
    conn = raw_sqlite(folder / "sagas-raw.db")
    conn.execute(
        "CREATE TABLE sagas (saga_id TEXT PRIMARY KEY, state TEXT, input TEXT, updated REAL)"
    )
    conn.execute(
        "CREATE TABLE steps (saga_id TEXT, idx INT, state TEXT, output TEXT, "
        "PRIMARY KEY (saga_id, idx))"
    )
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO sagas VALUES (?, 'completed', ?, 0)", ((f"c{i}", PAYLOAD) for i in range(size))
    )
    conn.executemany(
        "INSERT INTO steps VALUES (?, 0, 'done', '1')", ((f"c{i}",) for i in range(size))
    )
    conn.execute("COMMIT")
    ids = itertools.count()

    def run() -> None:
        saga_id = f"n{next(ids)}"
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO sagas VALUES (?, 'running', ?, ?)", (saga_id, PAYLOAD, 1.0))
        conn.execute("INSERT INTO steps VALUES (?, 0, 'pending', NULL)", (saga_id,))
        conn.execute("COMMIT")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE steps SET state = 'done', output = '1' WHERE saga_id = ?", (saga_id,))
        conn.execute("UPDATE sagas SET state = 'completed' WHERE saga_id = ?", (saga_id,))
        conn.execute("COMMIT")

    async def close() -> None:
        conn.close()

    return Prepared(run, close)


# -- idempotency records: claim a new key and store its result ---------------------------

EXPIRED = time.time() - 3600  # the copies have expired: reap deletes them


async def idem_ours(size: int, folder: Path) -> Prepared:
    path = folder / "idem-ours.db"
    store = await open_store(f"sqlite:///{path}", model="kv")
    assert isinstance(store, KeyValueStore)
    idem = Idempotency(store, policy=IdempotencyPolicy(expires_after=3600))
    async with idem.begin("template", PAYLOAD) as run:
        run.set_result({"status": "paid"})
    loader = raw_sqlite(path)
    overrides = {"key": "'idem:7:default:c' || i", "expires_at": repr(EXPIRED)}
    clone_rows(loader, "multistore_kv", "key LIKE 'idem:%:template'", size, overrides)
    loader.close()
    ids = itertools.count()

    async def claim() -> None:
        async with idem.begin(f"n{next(ids)}", PAYLOAD) as run:
            run.set_result({"status": "paid"})

    return Prepared(claim, store.close, {"idem": idem, "path": path})


async def idem_raw(size: int, folder: Path) -> Prepared:
    path = folder / "idem-raw.db"
    conn = raw_sqlite(path)
    conn.execute(
        "CREATE TABLE records (key TEXT PRIMARY KEY, value TEXT, expires_at REAL) WITHOUT ROWID"
    )
    conn.execute("CREATE INDEX records_expiry ON records (expires_at)")
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO records VALUES (?, ?, ?)", ((f"c{i}", PAYLOAD, EXPIRED) for i in range(size))
    )
    conn.execute("COMMIT")
    ids = itertools.count()

    def claim() -> None:
        key = f"n{next(ids)}"
        conn.execute("INSERT INTO records VALUES (?, 'in progress', ?)", (key, time.time() + 3600))
        conn.execute("UPDATE records SET value = ? WHERE key = ?", (PAYLOAD, key))

    async def close() -> None:
        conn.close()

    return Prepared(claim, close, {"conn": conn})


# -- outbox: add an event in a transaction -----------------------------------------------

DELIVERED_AT = time.time() - 86_400  # a day ago: purge(older_than=3600) deletes them


async def outbox_ours(size: int, folder: Path) -> Prepared:
    path = folder / "outbox-ours.db"
    store = await _relational(path)
    outbox = Outbox(store)
    await outbox.setup()
    async with store.transaction() as tx:
        await outbox.add(tx, "template", "OrderPlaced", {"order": 0})
    loader = raw_sqlite(path)
    overrides = {
        "aggregate": "'order-' || (i % 1000)",
        "seq": "i",
        "event_id": "'c' || i",
        "state": "'delivered'",
        "delivered_at": repr(DELIVERED_AT),
    }
    clone_rows(loader, "multistore_outbox", "aggregate = 'template'", size, overrides)
    loader.close()

    async def add() -> None:
        async with store.transaction() as tx:
            await outbox.add(tx, "order-new", "OrderPlaced", {"order": 1})

    return Prepared(add, store.close, {"outbox": outbox, "path": path})


async def outbox_raw(size: int, folder: Path) -> Prepared:
    conn = raw_sqlite(folder / "outbox-raw.db")
    conn.execute(
        "CREATE TABLE events (aggregate TEXT, seq INT, event_id TEXT UNIQUE, payload TEXT, "
        "state TEXT, delivered_at REAL, PRIMARY KEY (aggregate, seq))"
    )
    conn.execute("CREATE INDEX events_delivered ON events (delivered_at)")
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO events VALUES (?, ?, ?, ?, 'delivered', ?)",
        ((f"order-{i % 1000}", i, f"c{i}", PAYLOAD, DELIVERED_AT) for i in range(size)),
    )
    conn.execute("COMMIT")
    seqs = itertools.count(1)

    def add() -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO events VALUES ('order-new', ?, ?, ?, 'pending', NULL)",
            (next(seqs), secrets.token_hex(16), PAYLOAD),
        )
        conn.execute("COMMIT")

    async def close() -> None:
        conn.close()

    return Prepared(add, close, {"conn": conn})


# -- 2PC decision log: log a commit, then forget it --------------------------------------

OLD = time.time() - 86_400


async def tpc_ours(size: int, folder: Path) -> Prepared:
    path = folder / "tpc-ours.db"
    log = await DecisionLog.open(f"sqlite:///{path}")
    await log.log_abort(Xid("bench", "0" * 22, log=log.log_id))
    loader = raw_sqlite(path)
    overrides = {"gtrid": "'c' || i", "created": repr(OLD)}
    clone_rows(loader, "multistore_tpc_log", "decision = 'abort'", size, overrides)
    loader.close()
    tids = itertools.count(1)

    async def decide() -> None:
        xid = Xid("bench", f"{next(tids):022x}", log=log.log_id)
        await log.log_commit(xid, ["a", "b"])
        await log.forget(xid)

    return Prepared(decide, log.close, {"log": log, "path": path})


async def tpc_raw(size: int, folder: Path) -> Prepared:
    conn = raw_sqlite(folder / "tpc-raw.db", synchronous="full")
    conn.execute(
        "CREATE TABLE decisions (gtrid TEXT PRIMARY KEY, decision TEXT, participants TEXT, "
        "created REAL)"
    )
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO decisions VALUES (?, 'abort', '[]', ?)", ((f"c{i}", OLD) for i in range(size))
    )
    conn.execute("COMMIT")
    tids = itertools.count(1)

    def decide() -> None:
        gtrid = f"n{next(tids)}"
        conn.execute(
            "INSERT INTO decisions VALUES (?, 'commit', '[\"a\",\"b\"]', ?)", (gtrid, time.time())
        )
        conn.execute("DELETE FROM decisions WHERE gtrid = ?", (gtrid,))

    async def close() -> None:
        conn.close()

    return Prepared(decide, close, {"conn": conn})


CASES = [
    Case(
        "saga-step",
        "saga log: run a 1-step saga, sqlite",
        "finished sagas",
        "sqlite3 2 transactions, 4 writes",
        saga_ours,
        saga_raw,
    ),
    Case(
        "idem-claim",
        "idempotency: claim a key and store its result, sqlite",
        "records",
        "sqlite3 INSERT + UPDATE",
        idem_ours,
        idem_raw,
        _reaper(
            "multistore_kv",
            lambda ours: ours.state["idem"].reap(),
            "DELETE FROM records WHERE expires_at < ?",
            time.time,
        ),
    ),
    Case(
        "outbox-add",
        "outbox: add an event in a transaction, sqlite",
        "delivered events",
        "sqlite3 INSERT in a transaction",
        outbox_ours,
        outbox_raw,
        _reaper(
            "multistore_outbox",
            lambda ours: ours.state["outbox"].purge(older_than=3600),
            "DELETE FROM events WHERE state = 'delivered' AND delivered_at < ?",
            lambda: time.time() - 3600,
        ),
    ),
    Case(
        "tpc-decision",
        "2pc decision log: log a commit and forget it, sqlite",
        "abort records",
        "sqlite3 INSERT + DELETE, synchronous=full",
        tpc_ours,
        tpc_raw,
        _reaper(
            "multistore_tpc_log",
            lambda ours: ours.state["log"].purge_aborts(older_than=3600),
            "DELETE FROM decisions WHERE decision = 'abort' AND created < ?",
            lambda: time.time() - 3600,
        ),
    ),
]
