"""``multistore bench sagas``: 3-step sagas with trivial steps, completed per second,
against a DBOS Transact workflow with 3 steps, on the same kind of log database
(an SQLite file, and PostgreSQL), one at a time and 8 concurrent.

Ours runs in this process (8 concurrent = 8 asyncio tasks on one engine); DBOS runs
in a child process (8 concurrent = 8 threads, as DBOS users run it), driven round
by round so the two alternate. DBOS (``pip install dbos``) is a benchmark-only
dependency, imported only in that child.
"""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._harness import BenchEnv, Row, compare_throughput
from multistore.consistency._saga import Saga, Step, StepContext
from multistore.consistency._saga_engine import SagaEngine
from multistore.errors import BenchmarkError
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore

SAGAS_PER_ROUND = 200
ROOT = Path(__file__).resolve().parents[1]


async def _one(ctx: StepContext) -> int:
    return 1


SAGA = Saga("bench", [Step("a", _one), Step("b", _one), Step("c", _one)])


class _Dbos:
    """A DBOS child process, asked for one timed round at a time."""

    def __init__(self, url: str) -> None:
        env = dict(os.environ, DBOS__LOGLEVEL="WARNING")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._sagas_dbos", url],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._expect("ready")

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise BenchmarkError("the DBOS anchor process ended early (is dbos installed?)")
        return line.strip()

    def _expect(self, word: str) -> None:
        while self._line() != word:
            pass

    async def round(self, concurrency: int) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{concurrency} {SAGAS_PER_ROUND}\n")
        self.proc.stdin.flush()
        return float(await asyncio.to_thread(self._line))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.write("\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def _ours_round(engine: SagaEngine, concurrency: int) -> float:
    per_task = SAGAS_PER_ROUND // concurrency

    async def worker() -> None:
        for _ in range(per_task):
            result = await engine.start(SAGA)
            if not result.completed:
                raise BenchmarkError(f"a benchmark saga ended {result.state.value}")

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return per_task * concurrency / (time.perf_counter() - start)


async def _case(label: str, ours_url: str, dbos_url: str) -> list[Row]:
    store = await open_store(ours_url, model="relational")
    assert isinstance(store, RelationalStore)
    dbos = _Dbos(dbos_url)
    rows = []
    try:
        async with store, SagaEngine(store, [SAGA]) as engine:
            for _ in range(20):
                await engine.start(SAGA)
            for concurrency in (1, 8):
                mode = "one at a time" if concurrency == 1 else f"{concurrency} concurrent"
                rows.append(
                    await compare_throughput(
                        f"3-step saga, {label} log, {mode}",
                        functools.partial(_ours_round, engine, concurrency),
                        functools.partial(dbos.round, concurrency),
                        "DBOS Transact 3-step workflow",
                        unit="sagas/s",
                    )
                )
    finally:
        dbos.close()
    return rows


async def run() -> list[Row]:
    env = BenchEnv()
    rows: list[Row] = []
    try:
        rows.extend(
            await _case(
                "sqlite", f"sqlite:///{env.tmp / 'ours.db'}", f"sqlite:///{env.tmp / 'dbos.db'}"
            )
        )
        rows.extend(
            await _case("postgresql", await env.url("postgresql"), await env.url("postgresql"))
        )
    finally:
        env.close()
    return rows
