"""Idempotency keys on every backend: one execution per (client, key), replay, leases,
recovery points, expiry, and the ASGI middleware.

Backends: SQLite and Redis key-value stores, SQLite, PostgreSQL and MariaDB relational
stores (servers are real throwaway ones). Each test runs one ``asyncio.run`` that opens
its own stores, so no pool crosses event loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from multistore.consistency._idempotency import (
    Idempotency,
    IdempotencyInProgressError,
    IdempotencyKeyMissingError,
    IdempotencyKeyReusedError,
    IdempotencyPolicy,
    InvalidIdempotencyKeyError,
    current_run,
    fingerprint,
    idempotent,
)
from multistore.errors import (
    InvalidValueError,
    NotFoundError,
    StoreUnavailableError,
    UsageError,
)
from multistore.stores import open_store

Target = tuple[str, str]  # (url, model)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(
    params=[
        "sqlite-kv",
        pytest.param("redis-kv", marks=pytest.mark.server),
        pytest.param("rediscluster-kv", marks=pytest.mark.server),
        "sqlite-relational",
        pytest.param("postgresql-relational", marks=pytest.mark.server),
        pytest.param("mariadb-relational", marks=pytest.mark.server),
    ]
)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    name = str(request.param)
    if name == "sqlite-kv":
        return f"sqlite:///{tmp_path / 'idem-kv.db'}", "kv"
    if name == "redis-kv":
        return str(request.getfixturevalue("redis_url")), "kv"
    if name == "rediscluster-kv":
        return str(request.getfixturevalue("redis_cluster_url")), "kv"
    if name == "sqlite-relational":
        return f"sqlite:///{tmp_path / 'idem-rel.db'}", "relational"
    if name == "postgresql-relational":
        return str(request.getfixturevalue("postgres_url")), "relational"
    return str(request.getfixturevalue("mariadb_url")), "relational"


@pytest.fixture
def sqlite_target(tmp_path: Path) -> Target:
    return f"sqlite:///{tmp_path / 'idem-kv.db'}", "kv"


@pytest.fixture(
    params=[
        pytest.param("redis-kv", marks=pytest.mark.server),
        pytest.param("redis_cluster-kv", marks=pytest.mark.server),
        pytest.param("postgres-relational", marks=pytest.mark.server),
        pytest.param("mariadb-relational", marks=pytest.mark.server),
    ]
)
def server_target(request: pytest.FixtureRequest) -> Target:
    """The backends whose database has a clock of its own."""
    name = str(request.param)
    fixture = name.split("-")[0] + "_url"
    return str(request.getfixturevalue(fixture)), name.split("-")[1]


@contextlib.asynccontextmanager
async def opened(
    target: Target,
    policy: IdempotencyPolicy | None = None,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[Idempotency]:
    url, model = target
    store = await open_store(url, model=model)
    try:
        yield Idempotency(store, policy=policy or IdempotencyPolicy(), clock=clock)
    finally:
        await store.close()


async def wait_for(condition: Callable[[], Awaitable[bool]], *, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.02)


class PaymentDeclinedError(ValueError):
    """A business error of the test's own, stored and re-raised on replay."""


# -- the core guarantees on every backend ----------------------------------------------


def test_concurrent_identical_requests_execute_once(target: Target) -> None:
    async def body() -> None:
        executions = 0

        async with opened(target) as idem_a, opened(target) as idem_b:

            async def charge(amount: int) -> dict[str, int]:
                nonlocal executions
                executions += 1
                await asyncio.sleep(0.2)
                return {"charged": amount, "execution": executions}

            calls = [
                idempotent(idem, key=lambda amount: "order-1", client="shop")(charge)
                for idem in (idem_a, idem_b)
            ]
            outcomes = await asyncio.gather(
                *(calls[i % 2](100) for i in range(50)), return_exceptions=True
            )
            assert executions == 1
            values = [o for o in outcomes if not isinstance(o, BaseException)]
            busy = [o for o in outcomes if isinstance(o, IdempotencyInProgressError)]
            assert len(values) + len(busy) == 50, outcomes
            assert all(v == {"charged": 100, "execution": 1} for v in values)
            # after completion every retry is a replay of the one execution
            assert await calls[1](100) == {"charged": 100, "execution": 1}
            assert executions == 1

    asyncio.run(body())


def test_payload_mismatch_is_refused_and_changes_nothing(target: Target) -> None:
    async def body() -> None:
        async with opened(target) as idem:
            async with idem.begin("k-1", {"amount": 10}, client="c") as run:
                with pytest.raises(IdempotencyKeyReusedError):  # while in progress, too
                    async with idem.begin("k-1", {"amount": 99}, client="c"):
                        pass  # never entered: the claim is refused
                run.set_result({"ok": 10})
            before = await idem.get("k-1", client="c")
            with pytest.raises(IdempotencyKeyReusedError) as info:
                async with idem.begin("k-1", {"amount": 99}, client="c"):
                    raise AssertionError("must not run")
            assert info.value.http_status == 422
            assert info.value.to_problem()["title"] == "IdempotencyKeyReusedError"
            assert await idem.get("k-1", client="c") == before
            async with idem.begin("k-1", {"amount": 10}, client="c") as again:
                assert again.replayed and again.result() == {"ok": 10}

    asyncio.run(body())


def test_other_clients_key_is_invisible(target: Target) -> None:
    async def body() -> None:
        async with opened(target) as idem:
            ran: list[str] = []

            async def pay(user: str, amount: int) -> str:
                ran.append(user)
                return f"{user} paid {amount}"

            paid = idempotent(idem, key=lambda user, amount: "same-key", client=lambda u, a: u)(pay)
            assert await paid("alice", 5) == "alice paid 5"
            assert await paid("bob", 7) == "bob paid 7"  # another payload: no 422 across clients
            assert await paid("alice", 5) == "alice paid 5"
            assert ran == ["alice", "bob"]
            alice = await idem.get("same-key", client="alice")
            bob = await idem.get("same-key", client="bob")
            assert alice is not None and bob is not None
            assert alice.result == {"value": "alice paid 5"}
            assert bob.result == {"value": "bob paid 7"}
            assert await idem.get("same-key", client="carol") is None

    asyncio.run(body())


def test_keys_and_clients_are_case_and_space_sensitive(target: Target) -> None:
    """Keys differing only in case, and client scopes differing in case or by a
    trailing space, are different (MariaDB's default collation folds them together)."""

    async def body() -> None:
        async with opened(target) as idem:
            ran: list[str] = []

            async def pay(key: str, client: str) -> str:
                ran.append(f"{client}/{key}")
                return f"{client}/{key}"

            paid = idempotent(idem, key=lambda k, c: k, client=lambda k, c: c)(pay)
            calls = [("order-1", "shop"), ("Order-1", "shop"), ("order-1", "Shop")]
            calls.append(("order-1", "shop "))
            for key, client in calls:
                assert await paid(key, client) == f"{client}/{key}"
            assert len(ran) == 4
            assert await paid("Order-1", "shop") == "shop/Order-1"  # replayed, not run
            assert len(ran) == 4

    asyncio.run(body())


def test_stored_error_is_replayed_without_running_again(target: Target) -> None:
    async def body() -> None:
        async with opened(target) as idem:
            calls = 0

            @idempotent(idem, key=lambda card: f"pay-{card}")
            async def pay(card: str) -> None:
                nonlocal calls
                calls += 1
                if card == "declined":
                    raise PaymentDeclinedError(f"card {card} was declined")
                raise NotFoundError("no such card")

            for _ in range(2):
                with pytest.raises(PaymentDeclinedError, match="card declined was declined"):
                    await pay("declined")
            assert calls == 1
            for _ in range(2):
                with pytest.raises(NotFoundError, match="no such card"):
                    await pay("missing")
            assert calls == 2

    asyncio.run(body())


def test_store_error_after_the_effects_is_stored_by_default(sqlite_target: Target) -> None:
    """A function that charged the card and then failed to write its own record with a
    ``StoreError``: a retry must not charge again. The error is stored (as Stripe
    stores a 500); only the policy's ``retry_on`` classes release the key."""

    async def body() -> None:
        charges: list[int] = []

        async def charge(amount: int) -> None:
            charges.append(amount)  # the effect
            raise StoreUnavailableError("the orders database went away")

        async with opened(sqlite_target) as idem:
            paid = idempotent(idem, key=lambda amount: "order-1")(charge)
            for _ in range(2):
                with pytest.raises(StoreUnavailableError, match="went away"):
                    await paid(10)
            assert charges == [10]

        policy = IdempotencyPolicy(retry_on=(StoreUnavailableError,))
        async with opened(sqlite_target, policy) as idem:  # opted in: released, run again
            paid = idempotent(idem, key=lambda amount: "order-2")(charge)
            for _ in range(2):
                with pytest.raises(StoreUnavailableError):
                    await paid(20)
            assert charges == [10, 20, 20]

    asyncio.run(body())


def test_live_holder_keeps_its_lease_past_the_lease_period(target: Target) -> None:
    """Powertools' Redis layer took over an in-progress key whose holder was alive; here
    the holder's heartbeat renews the lease, so a concurrent retry never runs."""
    policy = IdempotencyPolicy(lease=0.6, heartbeat=0.1)

    async def body() -> None:
        executions = 0
        async with opened(target, policy) as holder, opened(target, policy) as other:

            async def slow(idem: Idempotency) -> str:
                async with idem.begin("slow", {"x": 1}) as run:
                    if run.replayed:
                        return str(run.result())
                    nonlocal executions
                    executions += 1
                    await asyncio.sleep(2.0)  # more than three lease periods
                    run.set_result("done")
                return "done"

            first = asyncio.create_task(slow(holder))
            await wait_for(lambda: asyncio.sleep(0, executions == 1))
            refused = 0
            while not first.done():
                with contextlib.suppress(IdempotencyInProgressError):
                    await slow(other)
                    assert first.done(), "a retry ran while the holder was alive"
                    break
                refused += 1
                await asyncio.sleep(0.05)
            assert await first == "done"
            assert executions == 1
            assert refused >= 10
            assert await slow(other) == "done"
            assert executions == 1

    asyncio.run(body())


_HOLDER = """
import asyncio, sys
from multistore.consistency._idempotency import Idempotency, IdempotencyPolicy
from multistore.stores import open_store

async def main(url, model):
    store = await open_store(url, model=model)
    idem = Idempotency(store, policy=IdempotencyPolicy(lease=0.5, heartbeat=0.1))
    async with idem.begin("order-7", {"amount": 30}, client="shop") as run:
        await run.checkpoint("charged", {"charge_id": "ch_1"})
        print("CHARGED", flush=True)
        await asyncio.sleep(60)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_crashed_holder_lease_expires_and_retry_resumes(target: Target) -> None:
    url, model = target
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, url, model],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "CHARGED", (line, proc.stderr.read() if proc.stderr else "")

        async def body() -> None:
            async with opened(target, IdempotencyPolicy(lease=0.5)) as idem:
                with pytest.raises(IdempotencyInProgressError) as info:  # the holder is alive
                    async with idem.begin("order-7", {"amount": 30}, client="shop"):
                        raise AssertionError("must not run")
                assert 0 < info.value.retry_after <= 0.5
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)

                resumed: list[tuple[str | None, Any]] = []
                waits: list[float] = []  # retry_after of each refusal after the kill

                async def retry() -> bool:
                    try:
                        async with idem.begin("order-7", {"amount": 30}, client="shop") as run:
                            assert run.resumed and not run.replayed
                            resumed.append((run.recovery_point, run.recovery_data))
                            run.set_result(
                                {"order": 7, "charge_id": run.recovery_data["charge_id"]}
                            )
                    except IdempotencyInProgressError as refused:
                        waits.append(refused.retry_after)
                        return False
                    return True

                await wait_for(retry, within=10.0)
                # the dead holder's lease was never renewed: each refusal pointed at the
                # end of the policy's 0.5 s lease, which is what the retry waited out
                assert all(0 < wait <= 0.5 for wait in waits), waits
                assert resumed == [("charged", {"charge_id": "ch_1"})]
                async with idem.begin("order-7", {"amount": 30}, client="shop") as run:
                    assert run.replayed
                    assert run.result() == {"order": 7, "charge_id": "ch_1"}

        asyncio.run(body())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


_STALLED_HOLDER = """
import asyncio, sys
from multistore.consistency._idempotency import Idempotency, IdempotencyPolicy
from multistore.errors import IdempotencyLeaseLostError
from multistore.stores import open_store

async def main(url, model):
    store = await open_store(url, model=model)
    policy = IdempotencyPolicy(lease=0.3, expires_after=0.3, heartbeat=0.1)
    idem = Idempotency(store, policy=policy)
    try:
        async with idem.begin("order-8", {"amount": 5}, client="shop") as run:
            print("CLAIMED", flush=True)
            await asyncio.to_thread(sys.stdin.readline)  # the test says when to finish
            run.set_result("from the stalled holder")
    except IdempotencyLeaseLostError as exc:
        print("LOST", exc, flush=True)
    else:
        print("STORED", flush=True)
    await store.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_stalled_holder_cannot_overwrite_the_key_created_again(target: Target) -> None:
    """A holder frozen (SIGSTOP) past its lease and its record's expiry wakes up after
    the record was dropped (reaped, or expired in a key-value store) and created again
    by another run at version 1 again. Its renewal and completion must not take the
    new record over: the owner is checked, not only the version."""
    url, model = target
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", _STALLED_HOLDER, url, model],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        line = proc.stdout.readline()
        assert line.strip() == "CLAIMED", (line, proc.stderr.read())
        proc.send_signal(signal.SIGSTOP)

        async def body() -> None:
            async with opened(target) as idem:

                async def dropped() -> bool:
                    await idem.reap()
                    return await idem.backend.load("shop", "order-8") is None

                await wait_for(dropped, within=10.0)
                async with idem.begin("order-8", {"amount": 5}, client="shop") as run:
                    assert not run.replayed and not run.resumed
                    assert run.record.version == 1  # the same version the holder had
                    proc.send_signal(signal.SIGCONT)
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
                    outcome = await asyncio.to_thread(proc.stdout.readline)
                    assert outcome.startswith("LOST"), (outcome, proc.stderr.read())
                    record = await idem.get("order-8", client="shop")
                    assert record is not None and record.owner == run.record.owner
                    run.set_result("from the new run")
                async with idem.begin("order-8", {"amount": 5}, client="shop") as again:
                    assert again.replayed and again.result() == "from the new run"

        asyncio.run(body())
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()


def test_recovery_point_survives_a_cancelled_run(target: Target) -> None:
    async def body() -> None:
        async with opened(target) as idem:
            phases: list[str] = []
            started = asyncio.Event()

            async def order() -> Any:
                async with idem.begin("multi", {"sku": "A"}) as run:
                    if run.replayed:
                        return run.result()
                    assert current_run() is run
                    if run.recovery_point is None:
                        phases.append("create order")
                        await run.checkpoint("order_created", {"order_id": 17})
                        started.set()
                        await asyncio.sleep(60)  # "crash" here: the task is cancelled
                    assert run.recovery_point == "order_created"
                    phases.append(f"charge order {run.recovery_data['order_id']}")
                    run.set_result("complete")
                return "complete"

            task = asyncio.create_task(order())
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await order() == "complete"  # the retry resumes at phase 2
            assert await order() == "complete"  # and is then replayed
            assert phases == ["create order", "charge order 17"]
            assert current_run() is None

    asyncio.run(body())


def test_expiry_and_reaper(target: Target) -> None:
    short = IdempotencyPolicy(expires_after=0.4, lease=0.3)

    async def body() -> None:
        async with opened(target, short) as idem, opened(target) as durable:
            calls: list[str] = []

            async def work(tag: str) -> str:
                calls.append(tag)
                return tag

            await idempotent(idem, key=lambda t: "short-lived")(work)("a")
            await idempotent(durable, key=lambda t: "long-lived")(work)("b")
            assert await idem.get("short-lived") is not None

            async def gone() -> bool:
                return await idem.get("short-lived") is None

            await wait_for(gone, within=5.0)
            if target[0].startswith("redis"):
                assert await idem.reap() == 0  # Redis drops expired keys by itself
            else:
                # The record reads as gone once its own expiry passed; the row's TTL was
                # set when the outcome was stored, a moment later (longer under load).
                reaped = 0

                async def reaped_one() -> bool:
                    nonlocal reaped
                    reaped += await idem.reap()
                    return reaped >= 1

                await wait_for(reaped_one, within=5.0)
                assert reaped == 1
            assert await idem.reap() == 0
            assert await durable.get("long-lived") is not None  # a live record is kept
            await idempotent(idem, key=lambda t: "short-lived")(work)("a")  # runs again
            assert calls == ["a", "b", "a"]

    asyncio.run(body())


def test_skewed_client_clocks_do_not_break_the_lease(server_target: Target) -> None:
    """Leases are decided on the database's clock: a holder whose wall clock is an hour
    behind still holds its lease for a client an hour ahead, and that client's reap
    keeps the live record (PostgreSQL and MariaDB decided on the clients' clocks)."""
    policy = IdempotencyPolicy(lease=30, expires_after=60)

    def behind() -> float:
        return time.time() - 3600

    def ahead() -> float:
        return time.time() + 3600

    async def body() -> None:
        ran: list[str] = []
        async with (
            opened(server_target, policy, behind) as slow,
            opened(server_target, policy, ahead) as fast,
        ):
            async with slow.begin("order-1", {"amount": 5}, client="shop") as run:
                ran.append("slow")
                await run.checkpoint("charged")  # a renewal on the skewed clock
                with pytest.raises(IdempotencyInProgressError) as info:
                    async with fast.begin("order-1", {"amount": 5}, client="shop"):
                        ran.append("fast")
                assert 25 < info.value.retry_after <= 30
                await fast.reap()
                assert await fast.get("order-1", client="shop") is not None
                run.set_result("paid once")
            async with fast.begin("order-1", {"amount": 5}, client="shop") as again:
                assert again.replayed and again.result() == "paid once"
            record = await fast.get("order-1", client="shop")
            assert record is not None
            assert abs(record.created_at - time.time()) < 30  # the server's time
        assert ran == ["slow"]

    asyncio.run(body())


# -- validation --------------------------------------------------------------------


def test_key_format_and_missing_key(sqlite_target: Target) -> None:
    async def body() -> None:
        async with opened(sqlite_target) as idem:
            for bad in ["", "x" * 256, "tab\t", "caf\u00e9", "nl\n", "del\x7f"]:
                with pytest.raises(InvalidIdempotencyKeyError) as info:
                    async with idem.begin(bad, {}):
                        raise AssertionError("must not run")
                assert info.value.http_status == 400
            with pytest.raises(IdempotencyKeyMissingError):
                async with idem.begin(None, {}):
                    raise AssertionError("must not run")
            async with idem.begin("x" * 255, {}) as run:
                assert not run.replayed
            async with idem.begin("!~", {}) as run:
                assert not run.replayed
            async with idem.begin(" a space ", {}) as run:  # what an RFC 8941 string holds
                assert not run.replayed
            with pytest.raises(InvalidValueError):
                async with idem.begin("k", {"nan": float("nan")}):
                    raise AssertionError("must not run")
            assert await idem.get("k") is None

            calls = 0

            @idempotent(idem, key=lambda k: k, required=False)
            async def optional(k: str | None) -> int:
                nonlocal calls
                calls += 1
                return calls

            assert await optional(None) == 1
            assert await optional(None) == 2  # no key, no protection
            strict = idempotent(idem, key=lambda k: k)(optional.__wrapped__)  # type: ignore[attr-defined]
            with pytest.raises(IdempotencyKeyMissingError):
                await strict(None)

    asyncio.run(body())


def test_a_cancellation_while_the_lease_renewal_stops_is_raised_after_the_outcome_is_stored(
    sqlite_target: Target,
) -> None:
    """The function returned while a lease renewal was in flight, and its caller was
    cancelled (a timeout, a shutdown) as the run stopped that renewal: the outcome is
    stored (a retry replays it, nothing runs twice) and the cancellation reaches the
    caller instead of being taken for the renewal's own."""
    calls: list[str] = []

    async def body() -> None:
        async with opened(sqlite_target, IdempotencyPolicy(lease=0.3, heartbeat=0.05)) as idem:

            @idempotent(idem, key=lambda k: k)
            async def charge(k: str) -> str:
                calls.append(k)
                if len(calls) == 1:
                    run = current_run()
                    assert run is not None

                    async def renewing() -> bool:
                        return run._beat is not None  # a renewal is in flight

                    await wait_for(renewing)
                    task = asyncio.current_task()
                    assert task is not None
                    task.cancel()  # lands at the run's next wait: stopping the renewal
                return f"charged {k}"

            with pytest.raises(asyncio.CancelledError):
                await charge("order-1")
            assert await charge("order-1") == "charged order-1"  # replayed
            assert calls == ["order-1"]

    asyncio.run(body())


def test_fingerprint_is_canonical_and_policy_is_validated() -> None:
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert len(fingerprint(None)) == 64
    # a lone surrogate is a Python string UTF-8 cannot encode: fingerprinted, distinctly
    assert fingerprint({"note": "\ud800"}) != fingerprint({"note": "\udc00"})
    assert fingerprint(["\ud83d\ude00"]) != fingerprint(["\U0001f600"])
    with pytest.raises(InvalidValueError):
        IdempotencyPolicy(lease=0)
    with pytest.raises(InvalidValueError):
        IdempotencyPolicy(lease=1.0, heartbeat=2.0)
    assert IdempotencyPolicy(lease=3.0).heartbeat_interval == 1.0


def test_non_json_result_is_stored_as_an_error(sqlite_target: Target) -> None:
    async def body() -> None:
        async with opened(sqlite_target) as idem:
            for _ in range(2):
                with pytest.raises(InvalidValueError, match="not JSON"):
                    async with idem.begin("obj", {}) as run:
                        if run.replayed:
                            run.result()  # the stored error is raised again
                        run.set_result(object())

    asyncio.run(body())


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def test_values_nested_too_deeply_for_json_are_refused_not_crashed(sqlite_target: Target) -> None:
    """A payload or a result nested deeper than JSON encoding can recurse is bad input
    (InvalidValueError), not a RecursionError: a result that cannot be stored is stored
    as that error, so a retry replays it instead of finding the key held until its
    lease runs out and running the function a second time."""
    deep = _nested(100_000)
    calls = 0

    async def body() -> None:
        async with opened(sqlite_target) as idem:
            with pytest.raises(InvalidValueError, match="JSON"):
                async with idem.begin("deep-payload", deep):
                    raise AssertionError("must not run")

            @idempotent(idem, key=lambda k: k)
            async def build(k: str) -> list[Any]:
                nonlocal calls
                calls += 1
                return deep

            for _ in range(2):
                with pytest.raises(InvalidValueError, match="not JSON"):
                    await build("deep-result")
            assert calls == 1

    asyncio.run(body())


def test_a_checkpoint_after_the_run_ended_is_refused(sqlite_target: Target) -> None:
    async def body() -> None:
        async with opened(sqlite_target) as idem:
            async with idem.begin("done", {}) as run:
                run.set_result(1)
            with pytest.raises(UsageError, match="after the run's block ended"):
                await run.checkpoint("late")
            async with idem.begin("done", {}) as again:
                assert again.replayed and again.result() == 1
                assert again.recovery_point is None

    asyncio.run(body())


def test_holders_started_at_different_moments_all_keep_their_leases(
    sqlite_target: Target,
) -> None:
    """The runs in progress on one event loop share one renewal timer, armed for the
    renewal due first: holders that started at different moments each keep their key
    for several lease periods, and a retry of any of them never runs."""
    policy = IdempotencyPolicy(lease=0.6, heartbeat=0.1)
    keys = [f"slow-{i}" for i in range(4)]
    executions = dict.fromkeys(keys, 0)

    async def body() -> None:
        async with opened(sqlite_target, policy) as holder, opened(sqlite_target, policy) as other:

            async def slow(idem: Idempotency, key: str) -> str:
                async with idem.begin(key, {}) as run:
                    if run.replayed:
                        return str(run.result())
                    executions[key] += 1
                    await asyncio.sleep(1.5)  # more than two lease periods
                    run.set_result(key)
                return key

            holders = []
            for key in keys:  # each one starts once the one before is running
                holders.append(asyncio.create_task(slow(holder, key)))
                await wait_for(lambda k=key: asyncio.sleep(0, executions[k] == 1))  # type: ignore[misc]
            refused = 0
            while not all(task.done() for task in holders):
                for key, task in zip(keys, holders, strict=True):
                    with contextlib.suppress(IdempotencyInProgressError):
                        await slow(other, key)
                        assert task.done(), f"a retry of {key} ran while its holder was alive"
                        continue
                    refused += 1
                await asyncio.sleep(0.05)
            assert [await task for task in holders] == keys
            assert refused >= 10
            assert [await slow(other, key) for key in keys] == keys
            assert executions == dict.fromkeys(keys, 1)

    asyncio.run(body())


@pytest.mark.server
def test_a_first_call_is_two_round_trips_and_a_replay_one(redis_url: str) -> None:
    """On Redis a first call is its claim and its completion (two scripts, no other
    command: no extra read) and starts no task; a replay is the claim alone."""
    import redis.asyncio as aioredis

    async def body() -> None:
        store = await open_store(redis_url, model="kv")
        admin = aioredis.Redis.from_url(redis_url)

        async def commands() -> dict[str, int]:
            stats = await admin.info("commandstats")
            return {name: int(s["calls"]) for name, s in stats.items() if name != "cmdstat_info"}

        def sent(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
            return {n: c - before.get(n, 0) for n, c in after.items() if c != before.get(n, 0)}

        try:
            idem = Idempotency(store)

            @idempotent(idem, key=lambda n: f"order-{n}")
            async def pay(n: int) -> dict[str, int]:
                return {"paid": n}

            assert await pay(0) == {"paid": 0}  # the server learns the scripts (EVAL)
            loop = asyncio.get_running_loop()
            started: list[object] = []

            def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
                started.append(coro)
                return asyncio.Task(coro, loop=loop, **kw)

            before = await commands()
            loop.set_task_factory(factory)
            try:
                assert await pay(1) == {"paid": 1}
            finally:
                loop.set_task_factory(None)
            first = await commands()
            assert await pay(1) == {"paid": 1}
            replay = await commands()
            # Commands a script runs are counted too: each script reads the server's
            # clock and the record's fields; the claim and the completion each write
            # the hash and its TTL; a replay reads the stored outcome.
            assert sent(before, first) == {
                "cmdstat_evalsha": 2,
                "cmdstat_time": 2,
                "cmdstat_hmget": 2,
                "cmdstat_hset": 2,
                "cmdstat_pexpire": 2,
            }
            assert started == []
            assert sent(first, replay) == {
                "cmdstat_evalsha": 1,
                "cmdstat_time": 1,
                "cmdstat_hmget": 2,
            }
        finally:
            await admin.aclose()
            await store.close()

    asyncio.run(body())


def test_a_policy_changed_after_use_renews_on_its_own_heartbeat(sqlite_target: Target) -> None:
    """Runs started after ``idem.policy`` changed renew on the new heartbeat, not on the
    one of the runs before (the shared renewal timer is per policy too)."""
    policy = IdempotencyPolicy(lease=0.6, heartbeat=0.1)

    async def body() -> None:
        async with opened(sqlite_target) as holder, opened(sqlite_target, policy) as other:
            async with holder.begin("warm-up", {}) as run:  # renewals every 10 s so far
                run.set_result(0)
            holder.policy = policy
            running = asyncio.Event()

            async def slow() -> None:
                async with holder.begin("slow", {}) as run:
                    running.set()
                    await asyncio.sleep(1.5)  # more than two of the new lease periods
                    run.set_result(1)

            task = asyncio.create_task(slow())
            await running.wait()
            while not task.done():
                with contextlib.suppress(IdempotencyInProgressError):
                    async with other.begin("slow", {}) as retry:
                        assert task.done(), "a retry ran while the holder was alive"
                        assert retry.replayed
                await asyncio.sleep(0.05)
            await task

    asyncio.run(body())
