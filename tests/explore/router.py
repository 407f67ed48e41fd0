"""The primary/replica router under the explorer, on a SQLite primary with two
log-shipped replicas: one router process whose clients write and read with tokens and
with a staleness bound, now and then a planned failover, sometimes a second router
process reading with the first one's tokens, sometimes another process writing to the
first primary through a router of its own; crashes and restarts, failing and stalling
store calls, lost replies, clock jumps.

Each write sets a key to the next number of that key (so a key's value only grows).
Invariants:
* forged tokens: a read carrying a token far ahead of the primary is refused unread;
* read-your-writes: a read carrying the token of an acknowledged write returns that
  write's number or a later one, or fails (a definite ``ForkedTokenError`` only after a
  failover, or a store error) — never an older value;
* bounded staleness: a read with ``max_staleness=s`` returns at least the number of
  every write acknowledged more than ``s`` seconds before the read began and since the
  last failover before it (an earlier one may be lost in the failover);
* tokens across failovers: after the faults stop, a router opened then (as a restarted
  process would) reads with every token handed out before the last failover, once the
  new primary has taken more writes than those tokens name: each read sees its write or
  raises ``ForkedTokenError`` — a token past a fork names another write by then;
* fenced old primary: a second application process, whose router writes to the first
  primary and never hears of a failover, has no write acknowledged after a failover
  began that the final primary lacks (once fenced, the old primary refuses its writes);
* durability: after the faults stop (and an operator's failover, when one was
  interrupted after its fence), the primary holds, for every key, at least the last
  number acknowledged since the last failover (one that could not fence first, or
  whose wait for a replica to catch up ran out, may lose earlier ones).
"""

from __future__ import annotations

import asyncio
from typing import Any

from multistore.errors import MultistoreError
from multistore.lab.explore import Actor, InvariantViolation, Simulation
from multistore.replication import (
    CausalToken,
    ForkedTokenError,
    InvalidTokenError,
    LogShipping,
    Router,
    RouterConfig,
)

KEYS = ("k0", "k1")
BOUND = 2.0
#: A position no write in a schedule reaches (positions of the embedded setup are small).
FORGED_POSITION = 1 << 48


async def _open(sim: Simulation, topology: list[str]) -> Router:
    """A router on the current topology (primary first): after a failover the
    application's configuration names the promoted replica, as an operator would."""
    return await Router.open(
        topology[0],
        topology[1:],
        config=RouterConfig(causal_wait=0.5),
        shipping=LogShipping(delay=sim.choices.choice((0.0, 0.1, 0.5, 3.0))),
    )


def _topology_after(routed: Router) -> list[str]:
    primary = routed.primary.url
    return [primary, *(n.url for n in routed.replicas if n.url != primary)]


async def router(sim: Simulation) -> None:
    topology = [f"sqlite:///{sim.directory / name}.db" for name in ("primary", "r1", "r2")]
    setup = await _open(sim, topology)
    try:
        await setup.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, n INTEGER NOT NULL)")
        for key in KEYS:
            await setup.execute("INSERT INTO kv VALUES (:k, 0)", {"k": key})
        side = await setup.execute("CREATE TABLE side (id INTEGER PRIMARY KEY)")
        await setup.wait_replayed(side.token)
    finally:
        await setup.close()

    acked: dict[str, list[tuple[float, int, str]]] = {k: [] for k in KEYS}  # (when, n, token)
    failovers: list[float] = []
    ops = sim.choices.randint(3, 10)
    done = 0

    async def app(actor: Actor) -> None:
        nonlocal done
        try:
            routed = await _open(sim, topology)
        except MultistoreError:
            return
        try:
            while done < ops:
                done += 1
                key = sim.choices.choice(KEYS)
                kind = sim.choices.random()
                try:
                    if kind < 0.45:
                        await actor.call(_write(sim, routed, key, acked))
                    elif kind < 0.9:
                        await actor.call(_read(sim, routed, key, acked, failovers))
                    elif kind < 0.95:
                        started = sim.loop.time()
                        failovers.append(started)  # a write may be lost from here on
                        await actor.call(routed.failover())
                        topology[:] = _topology_after(routed)
                        sim.note(f"{actor.label} failed over")
                    else:
                        await asyncio.sleep(sim.choices.uniform(0, 3))
                except (MultistoreError, asyncio.CancelledError) as exc:
                    sim.note(f"{actor.label}: {type(exc).__name__}: {str(exc)[:60]}")
        finally:
            await routed.close()

    stale_acked: list[tuple[float, int]] = []  # (when, id)

    async def stale(actor: Actor) -> None:
        """Another application process that writes through a router of its own on the
        first primary and never hears of a failover: once the old primary is fenced its
        writes are refused; none may be acknowledged and then lost."""
        try:
            routed = await Router.open(topology_at_start[0], [], config=RouterConfig())
        except MultistoreError:
            return
        try:
            for _ in range(sim.choices.randint(2, 5)):
                ident = len(stale_acked) + 1000 * actor.incarnation + 1
                try:
                    await actor.call(routed.execute("INSERT INTO side VALUES (:id)", {"id": ident}))
                    stale_acked.append((sim.loop.time(), ident))
                except (MultistoreError, asyncio.CancelledError) as exc:
                    sim.note(f"{actor.label}: {type(exc).__name__}: {str(exc)[:60]}")
                await asyncio.sleep(sim.choices.uniform(0, 1.0))
        finally:
            await routed.close()

    topology_at_start = list(topology)
    actors = [sim.spawn("app", app, restart=app)]
    if sim.choices.random() < 0.3:
        actors.append(sim.spawn("stale", stale, restart=stale))
    await sim.join(*actors)
    sim.quiesce()
    final = await _open(sim, topology)
    try:
        if await final.fetch_val("SELECT count(*) FROM multistore_fence", strong=True):
            # A failover fenced the primary and crashed before it promoted a replica:
            # the primary refuses every write until an operator fails over again.
            failovers.append(sim.loop.time())
            await final.failover()
            sim.note("the operator finished an interrupted failover")
        since = max(failovers, default=-1.0)
        if failovers:
            await _read_old_tokens(final, acked, failovers)
        for key, writes in acked.items():
            # A failover whose fence could not come first (the process crashed, the
            # old primary's file was locked) or whose wait for a replica to catch up ran
            # out may lose what was acknowledged before it (docs/replication/router.md):
            # what is checked is what was acknowledged on the final timeline.
            current = [n for when, n, _ in writes if when > since]
            if not current:
                continue
            have = await final.fetch_val("SELECT n FROM kv WHERE k = :k", {"k": key}, strong=True)
            last = max(current)
            if have is None or int(have) < last:
                raise InvariantViolation(
                    f"{key}: the primary holds {have}, but {last} was acknowledged"
                )
        for when, ident in stale_acked:
            if when <= since:
                continue
            have = await final.fetch_val(
                "SELECT id FROM side WHERE id = :id", {"id": ident}, strong=True
            )
            if have is None:
                raise InvariantViolation(
                    f"a write acknowledged to a router still on the old primary at "
                    f"{when:.3f} (after the last failover began, at {since:.3f}) is lost: "
                    f"side row {ident}"
                )
    finally:
        await final.close()


async def _write(
    sim: Simulation, routed: Router, key: str, acked: dict[str, list[tuple[float, int, str]]]
) -> None:
    async with routed.transaction() as tx:
        await tx.execute("UPDATE kv SET n = n + 1 WHERE k = :k", {"k": key})
        n = int(await tx.fetch_val("SELECT n FROM kv WHERE k = :k", {"k": key}))
    acked[key].append((sim.loop.time(), n, str(tx.token)))


async def _read(
    sim: Simulation,
    routed: Router,
    key: str,
    acked: dict[str, list[tuple[float, int, str]]],
    failovers: list[float],
) -> None:
    started = sim.loop.time()
    if sim.choices.random() < 0.1:
        await _read_forged(routed, key)
        return
    if acked[key] and sim.choices.random() < 0.6:
        when, n, token = sim.choices.choice(acked[key])
        try:
            got: Any = await routed.fetch_val(
                "SELECT n FROM kv WHERE k = :k", {"k": key}, token=token
            )
        except ForkedTokenError:
            if not any(f >= when for f in failovers):
                raise InvariantViolation(
                    f"ForkedTokenError for {key}'s token {token} with no failover after it"
                ) from None
            return
        if got is None or int(got) < n:
            raise InvariantViolation(
                f"read-your-writes: {key} read {got} with the token of write {n} ({token})"
            )
        return
    got = await routed.fetch_val("SELECT n FROM kv WHERE k = :k", {"k": key}, max_staleness=BOUND)
    # A write from before a failover may be lost in it (see the durability invariant).
    since = max((f for f in failovers if f <= started), default=-1.0)
    due = [n for when, n, _ in acked[key] if since < when < started - BOUND]
    if due and (got is None or int(got) < max(due)):
        raise InvariantViolation(
            f"bounded staleness: {key} read {got} with max_staleness={BOUND}, but "
            f"{max(due)} was acknowledged more than {BOUND} s before the read"
        )


async def _read_forged(routed: Router, key: str) -> None:
    """A read with a token no write produced, far ahead of the primary on its timeline:
    refused unread (``InvalidTokenError``, or a definite error when the primary cannot be
    asked), never answered after waiting for replicas that will not get there."""
    forged = CausalToken(routed.timeline, FORGED_POSITION)
    try:
        got = await routed.fetch_val("SELECT n FROM kv WHERE k = :k", {"k": key}, token=forged)
    except InvalidTokenError:
        return
    raise InvariantViolation(f"forged token {forged} ahead of the primary: {key} read {got}")


async def _read_old_tokens(
    routed: Router, acked: dict[str, list[tuple[float, int, str]]], failovers: list[float]
) -> None:
    """Read with each token from before the last failover through ``routed`` (opened after
    it), once the primary is past every position those tokens name."""
    last = max(failovers)
    old = [
        (key, n, CausalToken.parse(t)) for key, ws in acked.items() for w, n, t in ws if w < last
    ]
    if not old:
        return
    target = max(token.position for _, _, token in old)
    for pad in range(target + 1):  # each write moves the position on by one at least
        wrote = await routed.execute("INSERT INTO kv VALUES (:k, 0)", {"k": f"pad{pad}"})
        if wrote.token.position > target:
            break
    for key, n, token in old:
        try:
            got: Any = await routed.fetch_val(
                "SELECT n FROM kv WHERE k = :k", {"k": key}, token=token
            )
        except ForkedTokenError:
            continue
        except InvalidTokenError as exc:
            raise InvariantViolation(
                f"a router opened after the last failover refuses the token of {key}'s "
                f"write {n} ({token}), which this cluster handed out: {exc}"
            ) from None
        if got is None or int(got) < n:
            raise InvariantViolation(
                f"read-your-writes after failover: {key} read {got} with the token of "
                f"write {n} ({token}) through a router opened after the last failover"
            )
