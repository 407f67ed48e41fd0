"""Demo section "primary/replica router": read-your-writes with causal tokens.

An embedded SQLite primary with two log-shipping replicas in ``<data dir>/demo-router``
(cleared at the start). Reads spread over the replicas; while the replicas apply the
log 0.3 s late, a read without a token misses the write just made, and the same read
with the write's causal token (or through a :class:`~multistore.replication.Session`)
waits for a replica that replayed it. Then a planned failover promotes a replica, and
the next write lands on the new primary.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from rich.table import Table
from rich.text import Text

from multistore.cli._demo import SectionReport
from multistore.cli._text import styled
from multistore.config import Config
from multistore.replication import LogShipping, Router, RouterConfig, replication_status

T = TypeVar("T")

LAG = 0.3
"""Seconds each replica applies the log late while the lag is on."""

READ = "SELECT items FROM carts WHERE user_id = 1"


async def _served(router: Router, call: Callable[[], Awaitable[T]]) -> tuple[T, str, float]:
    """Run one read or write; which node served it (by the nodes' counters) and how
    long it took."""
    before = {n.name: (n.reads, n.writes) for n in router.nodes}
    started = time.perf_counter()
    value = await call()
    elapsed = time.perf_counter() - started
    changed = [n.name for n in router.nodes if (n.reads, n.writes) != before[n.name]]
    return value, ", ".join(changed) or "?", elapsed


async def router_section(config: Config) -> SectionReport:
    """Replication router: reads on replicas, causal tokens, failover."""
    report = SectionReport("primary/replica router: read-your-writes and failover")
    folder = config.data_dir / "demo-router"
    await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)
    await asyncio.to_thread(Path.mkdir, folder, parents=True)
    names = ["primary", "replica1", "replica2"]
    steps: list[dict[str, Any]] = []
    router = await Router.open(
        f"sqlite:///{folder / 'primary.db'}",
        [f"sqlite:///{folder / 'replica1.db'}", f"sqlite:///{folder / 'replica2.db'}"],
        names=names,
        config=RouterConfig(causal_wait=2.0, probe_interval=0.2),
        shipping=LogShipping(interval=0.02),
    )
    async with router:
        await router.execute("CREATE TABLE carts (user_id INTEGER PRIMARY KEY, items TEXT)")
        seeded = await router.executemany(
            "INSERT INTO carts (user_id, items) VALUES (:id, :items)",
            [{"id": 1, "items": "book"}, {"id": 2, "items": "pen"}, {"id": 3, "items": "lamp"}],
        )
        await router.wait_replayed(seeded.token)

        before = {n.name: n.reads for n in router.nodes}
        for user in (1, 2, 3, 1, 2, 3):
            await router.fetch_val("SELECT items FROM carts WHERE user_id = :id", {"id": user})
        spread = {n.name: n.reads - before[n.name] for n in router.nodes}
        steps.append(
            {
                "step": "6 reads of carts 1-3, no token",
                "served_by": "\n".join(f"{k} ×{v}" for k, v in spread.items()),
                "answer": "spread round robin",
            }
        )

        for replica in router.replicas:
            router.shipper.set_delay(replica.name, LAG)
        written, node, _ = await _served(
            router, lambda: router.execute("UPDATE carts SET items = 'book,pen' WHERE user_id = 1")
        )
        steps.append(
            {
                "step": f"replicas now {LAG:g} s behind;\nwrite cart 1 = 'book,pen'",
                "served_by": node,
                "answer": f"token {written.token}",
                "token": str(written.token),
            }
        )
        stale, node, _ = await _served(router, lambda: router.fetch_val(READ))
        steps.append(
            {
                "step": "read cart 1, no token",
                "served_by": node,
                "answer": repr(stale),
                "value": stale,
                "stale": stale != "book,pen",
            }
        )
        fresh, node, waited = await _served(
            router, lambda: router.fetch_val(READ, token=written.token)
        )
        steps.append(
            {
                "step": f"read cart 1 with token {written.token}",
                "served_by": node,
                "answer": f"{fresh!r} after {waited * 1000:.0f} ms",
                "value": fresh,
                "sees_write": fresh == "book,pen",
            }
        )
        session = router.session()
        await session.execute("UPDATE carts SET items = 'book,pen,lamp' WHERE user_id = 1")
        mine, node, waited = await _served(router, lambda: session.fetch_val(READ))
        steps.append(
            {
                "step": "a session writes 'book,pen,lamp',\nthen reads cart 1",
                "served_by": node,
                "answer": f"{mine!r} after {waited * 1000:.0f} ms",
                "value": mine,
                "sees_write": mine == "book,pen,lamp",
            }
        )

        for replica in router.replicas:
            router.shipper.set_delay(replica.name, 0.0)
        if session.token is not None:
            await router.wait_replayed(session.token)  # a planned failover loses nothing
        old_primary = router.primary.name
        promoted = await router.failover()
        after, node, _ = await _served(
            router, lambda: router.execute("INSERT INTO carts (user_id, items) VALUES (4, 'mug')")
        )
        back = await router.fetch_val(
            "SELECT items FROM carts WHERE user_id = 4", token=after.token
        )
        steps.append(
            {
                "step": "failover(), then write cart 4 = 'mug'",
                "served_by": f"{node} (new primary)" if node == promoted else node,
                "answer": f"{promoted} promoted, {old_primary} fenced;\nread back {back!r}",
                "new_primary": promoted,
                "written_on": node,
                "read_back": back,
            }
        )
        status = await replication_status(router, refresh=False)

    table = Table(title="carts on a primary and two log-shipping replicas", show_lines=True)
    for column in ("step", "served by", "answer"):
        table.add_column(column, overflow="fold")
    for s in steps:
        answer: str | Text = s["answer"]
        if s.get("stale"):
            answer = styled(f"{answer}: stale", "red")
        elif s.get("sees_write"):
            answer = styled(answer, "green")
        table.add_row(s["step"], s["served_by"], answer)
    nodes = Table(title="nodes after the failover")
    for column in ("node", "role", "health", "position", "reads", "writes"):
        nodes.add_column(column)
    for n in status["nodes"]:
        nodes.add_row(
            n["name"], n["role"], n["health"], str(n["position"]), str(n["reads"]), str(n["writes"])
        )
    nodes.caption = (
        "a replica that follows a new primary rejoins the read rotation once it has "
        "stayed caught up for readmit_after"
    )
    report.tables.extend([table, nodes])
    report.data.update(
        {
            "read_spread": spread,
            "steps": steps,
            "stale_without_token": steps[2]["stale"],
            "token_read_sees_write": steps[3]["sees_write"],
            "session_read_sees_write": steps[4]["sees_write"],
            "new_primary": promoted,
            "write_after_failover_on": steps[5]["written_on"],
            "status": status,
        }
    )
    return report
