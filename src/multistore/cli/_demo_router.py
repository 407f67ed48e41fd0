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

from multistore.cli._demo import SectionReport
from multistore.cli._human import duration, table
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
                "answer": f"{fresh!r} after {duration(waited)}",
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
                "answer": f"{mine!r} after {duration(waited)}",
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

    shown = table("step", "served by", "answer", lines=True)
    for s in steps:
        answer = s["answer"]
        if s.get("stale"):
            answer = f"[red]{answer}: stale[/]"
        elif s.get("sees_write"):
            answer = f"[green]{answer}[/]"
        shown.add_row(s["step"], s["served_by"], answer)
    nodes = table("node", "role", "health", ">log position", ">reads", ">writes")
    for n in status["nodes"]:
        nodes.add_row(
            n["name"], n["role"], n["health"], str(n["position"]), str(n["reads"]), str(n["writes"])
        )
    report.add(
        shown,
        "carts on a primary and two log-shipping replicas",
        "A write returns a token: its position in the primary's log. A read that carries "
        "the token waits for a replica that has replayed that far (or falls back to the "
        "primary), so a user always sees their own writes; a session carries its latest "
        "token for you.",
    )
    lagging = [n["name"] for n in status["nodes"] if n["health"] == "lagging"]
    report.add(
        nodes,
        "nodes after the failover",
        "The old primary is fenced: it takes no more writes. "
        + (
            f"{', '.join(lagging)} shows as lagging because it only just started to follow "
            "the new primary; a replica rejoins the read rotation after it has stayed caught "
            "up for a while (RouterConfig.readmit_after)."
            if lagging
            else "Every replica follows the new primary."
        ),
    )
    missed = "missed" if steps[2]["stale"] else "happened to see"
    saw = steps[3]["sees_write"] and steps[4]["sees_write"]
    report.proved = (
        f"reads spread over the replicas; a read without a token {missed} the write just "
        "made, the same read with its token (or in a session) "
        + ("saw it" if saw else "[red]did not see it[/]")
        + f"; after the failover writes went to {steps[5]['written_on']}, the new primary"
    )
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
