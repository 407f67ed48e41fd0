"""``multistore bench crdt``: merging CRDT replicas, and how big their state is.

Cases, at 10, 1,000 and 100,000 elements:

* **OR-Set merge** and **cart merge** (``Cart`` = OR-Map of PN-Counters): two
  replicas that share the elements and then changed a tenth of them
  concurrently are merged into a new state. The anchor is pycrdt (the Yjs CRDT
  in Rust, bound for Python) holding the same data in a ``Map`` (element -> True,
  item -> quantity): a fresh ``Doc`` applies replica A's state update, then
  replica B's — Yjs's way to merge two states; ours copies A and joins B in
  memory. Yjs has no in-memory doc-to-doc merge, so its side includes decoding;
  two more cart rows at 1,000 items make ours decode both states too: from the
  binary wire form (``to_bytes``), and from the older JSON wire form.
* **State size**: the compact JSON of ``to_dict()`` against a plain JSON
  encoding of the same data (a list of elements, ``{"items": {...}}``) —
  ``speedup`` = plain / ours, so below 1 is the price of the causal metadata —
  and, for the cart, against the Yjs update of the same cart; the cart's binary
  wire form (``to_bytes``) against the Yjs update as well.

* **Multi-master replication**: a fresh node pulling 1,000 cart writes from
  another, two embedded (SQLite) nodes against raw sqlite3, and two PostgreSQL
  nodes against raw psycopg doing the same storage work.

pycrdt is a benchmark-only dependency, imported lazily.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from benchmarks._harness import Row, compare, compare_throughput
from multistore.core import Cart, ORSet

SIZES = (10, 1_000, 100_000)


def _timing(size: int) -> dict[str, int]:
    """Fewer operations for the big cases, so the whole run stays well under 90 s."""
    if size >= 100_000:
        return {"ops": 1, "rounds": 3, "warmup": 1}
    if size >= 1_000:
        return {"ops": 20, "rounds": 5, "warmup": 5}
    return {"ops": 300, "rounds": 5, "warmup": 30}


def _size_row(name: str, ours: int, anchor: int, anchor_name: str) -> Row:
    return Row(
        name=name,
        metric="state size",
        unit="bytes",
        ours=float(ours),
        anchor=float(anchor),
        anchor_name=anchor_name,
        speedup=round(anchor / ours, 3),
    )


def _compact(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _orset_replicas(size: int) -> tuple[ORSet[str], ORSet[str], ORSet[str]]:
    """A shared start, then replica a removes a tenth and b adds a tenth, concurrently."""
    a: ORSet[str] = ORSet("node-a")
    for i in range(size):
        a.add(f"user-{i:06d}")
    base = a.copy()
    b = a.rebind("node-b")
    changed = max(1, size // 10)
    for i in range(changed):
        a.remove(f"user-{i:06d}")
        b.add(f"user-{size + i:06d}")
    return base, a, b


def _cart_replicas(size: int) -> tuple[Cart, Cart, Cart]:
    """A shared start, then replica a changes a tenth of the items and b adds a tenth."""
    a = Cart("node-a")
    for i in range(size):
        a.add(f"sku-{i:06d}", i % 5 + 1)
    base = a.copy()
    b = a.rebind("node-b")
    changed = max(1, size // 10)
    for i in range(changed):
        a.add(f"sku-{i:06d}", 1)
        b.add(f"sku-{size + i:06d}", 2)
    return base, a, b


def _yjs_replicas(
    base: dict[str, Any], values_a: dict[str, Any], values_b: dict[str, Any]
) -> tuple[bytes, bytes]:
    """The same history in Yjs: a shared start, then each side's changes; their full updates."""
    from pycrdt import Doc, Map

    doc_a: Doc[Any] = Doc()
    start = doc_a.get("data", type=Map)
    with doc_a.transaction():
        for key, value in base.items():
            start[key] = value
    doc_b: Doc[Any] = Doc()
    doc_b.apply_update(doc_a.get_update())
    for doc, values in ((doc_a, values_a), (doc_b, values_b)):
        data = doc.get("data", type=Map)
        with doc.transaction():
            for key, value in values.items():
                if base.get(key) != value:
                    data[key] = value
            for key in base:
                if key not in values:
                    del data[key]
    return doc_a.get_update(), doc_b.get_update()


def _yjs_merge(update_a: bytes, update_b: bytes) -> Any:
    from pycrdt import Doc

    def merge() -> object:
        doc: Doc[Any] = Doc()
        doc.apply_update(update_a)
        doc.apply_update(update_b)
        return doc

    return merge


async def _orset_cases(size: int) -> list[Row]:
    base, a, b = _orset_replicas(size)
    update_a, update_b = _yjs_replicas(
        dict.fromkeys(base.value, True), dict.fromkeys(a.value, True), dict.fromkeys(b.value, True)
    )

    async def ours() -> object:
        return a.merge(b)

    rows = [
        await compare(
            f"OR-Set merge, {size:,} elements",
            ours,
            _yjs_merge(update_a, update_b),
            "pycrdt (Yjs) Map, apply both updates",
            **_timing(size),
        )
    ]
    merged = a.merge(b)
    plain = _compact(sorted(merged.value))
    rows.append(
        _size_row(
            f"OR-Set state, {size:,} elements",
            len(merged.to_json().encode()),
            len(plain),
            "plain JSON",
        )
    )
    return rows


async def _cart_cases(size: int) -> list[Row]:
    base, a, b = _cart_replicas(size)
    update_a, update_b = _yjs_replicas(base.quantities(), a.quantities(), b.quantities())

    async def ours() -> object:
        return a.merge(b)

    rows = [
        await compare(
            f"cart merge, {size:,} items",
            ours,
            _yjs_merge(update_a, update_b),
            "pycrdt (Yjs) Map, apply both updates",
            **_timing(size),
        )
    ]
    if size == 1_000:
        # Yjs above decodes both states from bytes; do the same: decode our wire form
        # (to_bytes), then merge. The second row decodes the older JSON wire form.
        wire_a, wire_b = a.to_bytes(), b.to_bytes()
        json_a, json_b = a.to_json().encode(), b.to_json().encode()

        async def ours_from_wire() -> object:
            left = Cart.from_bytes(wire_a, node="node-c")
            return left.merge(Cart.from_bytes(wire_b, node="node-c"))

        async def ours_from_json() -> object:
            left = Cart.from_bytes(json_a, node="node-c")
            return left.merge(Cart.from_bytes(json_b, node="node-c"))

        for label, fn in (("wire", ours_from_wire), ("JSON wire form", ours_from_json)):
            rows.append(
                await compare(
                    f"cart merge from the {label} (decode both states), {size:,} items",
                    fn,
                    _yjs_merge(update_a, update_b),
                    "pycrdt (Yjs) Map, apply both updates",
                    **_timing(size),
                )
            )
    merged = a.merge(b)
    ours_size = len(merged.to_json().encode())
    plain = _compact({"items": merged.quantities()})
    rows.append(_size_row(f"cart state, {size:,} items", ours_size, len(plain), "plain JSON"))
    doc = _yjs_merge(update_a, update_b)()
    rows.append(
        _size_row(f"cart state, {size:,} items", ours_size, len(doc.get_update()), "Yjs update")
    )
    rows.append(
        _size_row(
            f"cart wire state (to_bytes), {size:,} items",
            len(merged.to_bytes()),
            len(doc.get_update()),
            "Yjs update",
        )
    )
    return rows


REPLICATED_CHANGES = 1_000


async def _replication_case() -> Row:
    """Changes applied per second between two embedded (SQLite) multi-master nodes.

    Node a holds 1,000 cart writes (100 keys); a fresh node b pulls and applies
    them all (in batches of 200). Each run starts from a copy of a's file, since
    a trims its log once b has everything. The anchor is the floor of the same
    storage work: sqlite3 inserting the same 1,000 change rows and upserting the
    states, one transaction per 200.
    """
    import shutil
    import sqlite3
    import tempfile
    import time

    from multistore.core import MergeFunction, merge_carts
    from multistore.replication._multimaster import MultiMasterNode
    from multistore.replication._replicator import Replicator

    folder = tempfile.mkdtemp(prefix="msbench-mm-")
    resolver = MergeFunction(merge_carts)
    source = await MultiMasterNode.open(f"sqlite:///{folder}/a.db", "a", resolver=resolver)
    try:
        for i in range(REPLICATED_CHANGES):
            await source.put(f"cart:{i % 100}", {"items": {f"sku-{i}": i % 5 + 1}})
        bodies = [json.dumps(c.to_dict()) for c in (await source.changes_after(0, 10**6))[0]]
    finally:
        await source.close()
    run_number = 0

    async def ours() -> float:
        nonlocal run_number
        run_number += 1
        copy = f"{folder}/a{run_number}.db"
        await asyncio.to_thread(shutil.copyfile, f"{folder}/a.db", copy)
        origin = await MultiMasterNode.open(f"sqlite:///{copy}", "a", resolver=resolver)
        url = f"sqlite:///{folder}/b{run_number}.db"
        target = await MultiMasterNode.open(url, "b", resolver=resolver)
        try:
            start = time.perf_counter()
            await Replicator([origin, target], push=False).sync()
            elapsed = time.perf_counter() - start
        finally:
            await target.close()
            await origin.close()
        return REPLICATED_CHANGES / elapsed

    async def anchor() -> float:
        nonlocal run_number
        run_number += 1
        db = sqlite3.connect(f"{folder}/raw{run_number}.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=wal")
        db.execute("PRAGMA synchronous=normal")
        db.execute("CREATE TABLE log (origin TEXT, seq INT, body TEXT, PRIMARY KEY (origin, seq))")
        db.execute("CREATE TABLE data (key TEXT PRIMARY KEY, state TEXT)")
        start = time.perf_counter()
        for first in range(0, len(bodies), 200):
            db.execute("BEGIN")
            for seq, body in enumerate(bodies[first : first + 200], start=first + 1):
                db.execute("INSERT INTO log VALUES ('a', ?, ?)", (seq, body))
                db.execute(
                    "INSERT INTO data VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET state = excluded.state",
                    (f"cart:{seq % 100}", body),
                )
            db.execute("COMMIT")
        elapsed = time.perf_counter() - start
        db.close()
        return REPLICATED_CHANGES / elapsed

    return await compare_throughput(
        "multi-master replication, 2 embedded nodes",
        ours,
        anchor,
        "raw sqlite3 inserts",
        unit="changes/s",
    )


async def _postgres_replication_case() -> Row:
    """Changes applied per second between two multi-master nodes on PostgreSQL.

    The same workload as the embedded case: node a holds 1,000 cart writes (100
    keys), written before the clock starts; a fresh node b pulls and applies them all.
    Each run gets fresh databases on one throwaway server. The anchor is the floor of
    the same storage work in psycopg: the same 1,000 change rows inserted and the
    states upserted, one transaction per 200, each statement batched (pipelined).
    """
    import time

    import psycopg

    from benchmarks._harness import BenchEnv
    from multistore.core import MergeFunction, merge_carts
    from multistore.replication._multimaster import MultiMasterNode
    from multistore.replication._replicator import Replicator

    resolver = MergeFunction(merge_carts)
    env = BenchEnv()
    try:

        async def source() -> MultiMasterNode:
            """A fresh node a holding the writes (not timed)."""
            origin = await MultiMasterNode.open(await env.url("postgresql"), "a", resolver=resolver)
            for i in range(REPLICATED_CHANGES):
                await origin.put(f"cart:{i % 100}", {"items": {f"sku-{i}": i % 5 + 1}})
            return origin

        origin = await source()
        try:
            changes = (await origin.changes_after(0, 10**6))[0]
        finally:
            await origin.close()
        bodies = [json.dumps(c.to_dict()) for c in changes]

        async def ours() -> float:
            origin = await source()
            target = await MultiMasterNode.open(await env.url("postgresql"), "b", resolver=resolver)
            try:
                start = time.perf_counter()
                await Replicator([origin, target], push=False).sync()
                elapsed = time.perf_counter() - start
            finally:
                await target.close()
                await origin.close()
            return REPLICATED_CHANGES / elapsed

        async def anchor() -> float:
            url = await env.url("postgresql")
            with psycopg.connect(url) as db:
                db.execute(
                    "CREATE TABLE log (origin TEXT, seq INT, body TEXT, PRIMARY KEY (origin, seq))"
                )
                db.execute("CREATE TABLE data (key TEXT PRIMARY KEY, state TEXT)")
                db.commit()
                start = time.perf_counter()
                for first in range(0, len(bodies), 200):
                    batch = list(enumerate(bodies[first : first + 200], start=first + 1))
                    # executemany pipelines the statements: a batch, not a round trip each
                    with db.transaction(), db.cursor() as cur:
                        cur.executemany("INSERT INTO log VALUES ('a', %s, %s)", batch)
                        cur.executemany(
                            "INSERT INTO data VALUES (%s, %s) "
                            "ON CONFLICT (key) DO UPDATE SET state = excluded.state",
                            [(f"cart:{seq % 100}", body) for seq, body in batch],
                        )
                elapsed = time.perf_counter() - start
            return REPLICATED_CHANGES / elapsed

        return await compare_throughput(
            "multi-master replication, 2 PostgreSQL nodes",
            ours,
            anchor,
            "raw psycopg inserts",
            unit="changes/s",
        )
    finally:
        env.close()


async def run() -> list[Row]:
    rows: list[Row] = []
    for size in SIZES:
        rows += await _orset_cases(size)
        rows += await _cart_cases(size)
    rows.append(await _replication_case())
    rows.append(await _postgres_replication_case())
    return rows
