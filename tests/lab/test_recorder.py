"""The recorder, the workload and the fault runner, on a real embedded store."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import pytest

from multistore.core._history import EventType, Value, pair_operations
from multistore.core._history_report import check_history
from multistore.errors import InvalidValueError, StoreUnavailableError, UsageError
from multistore.lab._faults import (
    FAULT_PRESETS,
    Fault,
    FaultKind,
    FaultRunner,
    SkewedClock,
    preset_schedule,
)
from multistore.lab._history import HistoryRecorder, Processes, read_history, write_history
from multistore.lab._workload import Observed, Workload, final_reads, parse_mix, run_workload
from multistore.stores import open_store
from multistore.stores.kv import KeyValueStore


class KVClient:
    """The workload's client over a real key-value store (one SQLite file)."""

    def __init__(self, store: KeyValueStore) -> None:
        self.store = store

    async def read(self, key: str) -> Observed:
        raw = await self.store.get(key)
        return Observed(None if raw is None else int(raw))

    async def write(self, key: str, value: int, context: object | None = None) -> None:
        await self.store.set(key, str(value))


def test_recorder_classifies_outcomes_and_writes_jsonl(tmp_path: Path) -> None:
    async def body() -> HistoryRecorder:
        rec = HistoryRecorder()

        async def ok() -> Value:
            return 5

        async def definite() -> Value:
            raise UsageError("bad request")  # definite: it did not happen

        async def indeterminate() -> Value:
            raise StoreUnavailableError("connection lost")  # may have happened

        async def bug() -> Value:
            raise ZeroDivisionError

        assert (await rec.call(0, "read", "k", None, ok)).type is EventType.OK
        assert (await rec.call(0, "write", "k", 1, definite)).type is EventType.FAIL
        assert (await rec.call(0, "write", "k", 2, indeterminate)).type is EventType.INFO
        done = await rec.call(1, "read", "k", None, bug)
        assert done.type is EventType.INFO and isinstance(done.error, ZeroDivisionError)
        return rec

    rec = asyncio.run(body())
    events = rec.events
    assert [e.type.value for e in events] == [
        "invoke",
        "ok",
        "invoke",
        "fail",
        "invoke",
        "info",
        "invoke",
        "info",
    ]
    assert events[1].value == 5 and events[3].value == 1
    assert all(a.time <= b.time for a, b in itertools.pairwise(events))
    path = tmp_path / "h.jsonl"
    write_history(events, path)
    lines = path.read_text().splitlines()
    assert len(lines) == 8
    assert set(json.loads(lines[0])) == {"index", "process", "type", "f", "key", "value", "time"}
    assert read_history(path) == list(events)


def test_recorder_refuses_two_open_operations_on_one_process() -> None:
    rec = HistoryRecorder()
    call = rec.invoke(0, "read", "k")
    with pytest.raises(RuntimeError):
        rec.invoke(0, "read", "k")
    rec.complete(call, EventType.OK, 3)
    with pytest.raises(RuntimeError):
        rec.complete(call, EventType.OK, 3)


def test_cancelled_operation_is_recorded_as_info() -> None:
    async def body() -> HistoryRecorder:
        rec = HistoryRecorder()
        started = asyncio.Event()

        async def hang() -> Value:
            started.set()
            await asyncio.Event().wait()
            return None

        task = asyncio.ensure_future(rec.call(0, "write", "k", 1, hang))
        await asyncio.wait_for(started.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return rec

    assert [e.type for e in asyncio.run(body()).events] == [EventType.INVOKE, EventType.INFO]


def test_processes_move_on_after_a_crash() -> None:
    procs = Processes(3)
    assert [procs[i] for i in range(3)] == [0, 1, 2]
    assert procs.crashed(1) == 4 and procs.crashed(1) == 7 and procs[0] == 0


def test_parse_mix() -> None:
    assert parse_mix("read=1,write=1") == {"read": 0.5, "write": 0.5, "rmw": 0.0}
    for bad in ("read", "cas=1", "read=x", "read=0", "read=-1"):
        with pytest.raises(InvalidValueError):
            parse_mix(bad)


def test_workload_on_a_single_sqlite_store_is_linearizable(tmp_path: Path) -> None:
    """One real store on one machine is linearizable: the whole pipeline (workers,
    recorder, pairing, checkers) must find nothing, with concurrency and overlaps."""
    workload = Workload(ops=300, concurrency=6, duration=0.0, keys=3, seed=7)  # no pacing

    async def body() -> HistoryRecorder:
        store = await open_store(f"sqlite:///{tmp_path / 'kv.db'}", model="kv")
        assert isinstance(store, KeyValueStore)
        rec = HistoryRecorder()
        try:
            client = KVClient(store)
            await run_workload([client], rec, workload)
            await final_reads(client, rec, workload, process=100)
        finally:
            await store.close()
        return rec

    rec = asyncio.run(body())
    ops = pair_operations(rec.events)
    reads = [op for op in ops if op.is_read and op.ok]
    writes = [op for op in ops if op.is_write and op.ok]
    assert len(ops) >= 300 and len(reads) > 50 and len(writes) > 50
    assert any(r.value is not None for r in reads)
    overlapping = sum(1 for a, b in itertools.pairwise(ops) if b.invoke < a.complete)
    assert overlapping > 0  # the workers really ran concurrently
    assert {op.process for op in ops} >= set(range(6))
    report = check_history(rec.events)
    assert report.valid is True, report.to_dict()
    assert report.unverified_writes == 0  # the final reads judged every write


def test_fault_presets_and_runner_log() -> None:
    nodes = ["node0", "node1", "node2"]
    for name in FAULT_PRESETS:
        schedule = preset_schedule(name, nodes, 10.0, seed=3)
        assert all(0 <= f.at <= 10.0 for f in schedule)
    assert preset_schedule("kill", nodes, 10.0) == (
        Fault(2.0, FaultKind.KILL, "node0"),
        Fault(7.0, FaultKind.RESTART, "node0"),
    )
    with pytest.raises(InvalidValueError):
        preset_schedule("meteor", nodes, 1.0)

    class Recorded:
        def __init__(self) -> None:
            self.calls: list[tuple[str, str, float]] = []
            self.clock = SkewedClock(lambda: 1000.0)

        async def kill(self, node: str) -> None:
            self.calls.append(("kill", node, 0.0))

        async def restart(self, node: str) -> None:
            self.calls.append(("restart", node, 0.0))

        async def partition(self, node: str) -> None:
            self.calls.append(("partition", node, 0.0))

        async def heal(self, node: str) -> None:
            self.calls.append(("heal", node, 0.0))

        async def delay(self, node: str, seconds: float) -> None:
            self.calls.append(("delay", node, seconds))

        async def skew(self, node: str, ms: float) -> None:
            self.clock.offset_ms = ms
            self.calls.append(("skew", node, ms))

    target = Recorded()
    schedule = [
        Fault(0.0, FaultKind.PARTITION, "node1"),
        Fault(0.01, FaultKind.SKEW, "coordinator", 500.0),
        Fault(0.02, FaultKind.KILL, "node2"),
        Fault(0.03, FaultKind.DELAY, "node0", 0.1),
    ]
    runner = FaultRunner(schedule, target)

    async def body() -> None:
        await runner.run()
        assert target.clock() == 1000.5
        await runner.heal()

    asyncio.run(body())
    assert target.calls == [
        ("partition", "node1", 0.0),
        ("skew", "coordinator", 500.0),
        ("kill", "node2", 0.0),
        ("delay", "node0", 0.1),
        ("restart", "node2", 0.0),
        ("heal", "node1", 0.0),
        ("delay", "node0", 0.0),
        ("skew", "coordinator", 0.0),
    ]
    assert target.clock() == 1000.0
    assert [e["fault"] for e in runner.log][:2] == [
        "partition node1",
        "skew coordinator's clock by +500 ms",
    ]
    assert all(a["at_s"] <= b["at_s"] for a, b in zip(runner.log, runner.log[1:], strict=False))
