"""Idempotency keys from sync code: the decorator and ``begin`` on sync stores
(SQLite key-value and relational, Redis), shared by threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from multistore.errors import (
    IdempotencyInProgressError,
    IdempotencyKeyReusedError,
    UsageError,
)
from multistore.sync import Idempotency, Store, idempotent, open_store


@pytest.fixture(
    params=[
        ("sqlite", "kv"),
        ("sqlite", "relational"),
        pytest.param(("redis", "kv"), marks=pytest.mark.server),
    ],
    ids=lambda p: "-".join(p),
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    backend, model = request.param
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'idem.db'}"
    else:
        url = f"{request.getfixturevalue('redis_url')}?prefix=sync{id(tmp_path)}:"
    with open_store(url, model=model) as s:
        yield s


def test_decorated_function_runs_once_and_replays(store: Store) -> None:
    calls: list[int] = []
    with Idempotency(store) as idem:

        @idempotent(idem, key=lambda order, amount: order)
        def charge(order: str, amount: int) -> dict[str, int]:
            calls.append(amount)
            return {"charged": amount}

        assert charge("o-1", 10) == {"charged": 10}
        assert charge("o-1", 10) == {"charged": 10}  # replayed
        assert calls == [10]
        with pytest.raises(IdempotencyKeyReusedError):
            charge("o-1", 11)
        assert charge("o-2", 11) == {"charged": 11}
        assert calls == [10, 11]
        record = idem.get("o-1")
        assert record is not None and record.result == {"value": {"charged": 10}}


def test_a_stored_error_is_raised_again_without_running(store: Store) -> None:
    runs: list[str] = []
    with Idempotency(store) as idem:
        for _ in range(2):
            with (
                pytest.raises(Exception, match="card declined"),
                idem.begin("pay-1", {"amount": 5}) as run,
            ):
                if run.replayed:
                    run.result()
                runs.append("ran")
                raise ValueError("card declined")
        assert runs == ["ran"]


def test_threads_with_one_key_run_it_once(store: Store) -> None:
    """Threads racing on one key: one runs the function; each other thread is told it
    is in progress or gets the stored result."""
    ran: list[int] = []
    seen: list[object] = []
    gate = threading.Barrier(4)
    with Idempotency(store) as idem:

        @idempotent(idem, key=lambda n: "shared")
        def work(n: int) -> str:
            ran.append(n)
            return "done"

        def thread() -> None:
            gate.wait(timeout=30)
            try:
                seen.append(work(1))
            except IdempotencyInProgressError as exc:
                seen.append(type(exc))

        threads = [threading.Thread(target=thread) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
            assert not t.is_alive()
        assert ran == [1]
        assert "done" in seen and set(seen) <= {"done", IdempotencyInProgressError}
        assert work(1) == "done"


def test_an_in_memory_store_is_refused() -> None:
    with open_store("sqlite:///:memory:", model="kv") as s, pytest.raises(UsageError):
        Idempotency(s)
