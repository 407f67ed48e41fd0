"""Outbox relays and saga workers holding etcd leases, on a real three-member etcd
cluster and PostgreSQL: a killed holder's claims pass to another process as soon as
etcd drops its lease (the database lease is 600 s), and a holder paused past its
lease acts on none of its old claims once it runs again."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from multistore.config import load_config
from multistore.consistency import EtcdLeases, Outbox, SagaEngine
from multistore.consistency._etcd_leases import lease_group
from multistore.core._saga import SagaState
from multistore.errors import ConfigError, UsageError
from multistore.lab._etcd import EtcdCluster
from multistore.lab.servers import PostgresServer
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore
from multistore.urls import parse_url
from tests.consistency.etcd_lease_worker import EFFECTS, Effects, saga
from tests.consistency.worker_sagas import SAGAS, TABLES

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]
TTL = 2
BOUND = 60.0  # seconds to wait for a condition; the database leases are 600 s


def _etcd(etcd: EtcdCluster) -> str:
    return etcd.url(prefix=f"/t-{uuid.uuid4().hex[:8]}/")


async def _relational(url: str) -> RelationalStore:
    store = await open_store(url, model="relational")
    assert isinstance(store, RelationalStore)
    return store


async def _wait(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + BOUND
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {BOUND} s: {what}")
        await asyncio.sleep(0.05)


def _stopped(proc: subprocess.Popen[bytes]) -> bool:
    stat = Path(f"/proc/{proc.pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def _status(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


class Workers:
    """The worker processes of one test, stopped (and reaped) at its end."""

    def __init__(self, tmp_path: Path, base: dict[str, Any]) -> None:
        self.tmp_path = tmp_path
        self.base = base
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, worker: str, at: str | None = None) -> tuple[subprocess.Popen[bytes], Path]:
        status = self.tmp_path / f"{worker}.json"
        config = {**self.base, "worker": worker, "at": at, "status": str(status)}
        with (self.tmp_path / f"{worker}.err").open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.consistency.etcd_lease_worker", json.dumps(config)],
                cwd=ROOT,
                stderr=err,
            )
        self.procs.append(proc)
        return proc, status

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def workers(tmp_path: Path, kind: str, db: str, etcd: str) -> Iterator[Workers]:
    group = Workers(tmp_path, {"kind": kind, "db": db, "etcd": etcd, "ttl": TTL})
    try:
        yield group
    finally:
        group.stop_all()


async def _effects(store: RelationalStore) -> list[tuple[str, str, str]]:
    rows = await store.fetch_all("SELECT worker, owner, item FROM effects ORDER BY n")
    return [(str(r["worker"]), str(r["owner"]), str(r["item"])) for r in rows]


async def _outbox(url: str) -> tuple[RelationalStore, Outbox, list[str]]:
    store = await _relational(url)
    await store.execute(EFFECTS)
    outbox = Outbox(store)
    await outbox.setup()
    items = []
    for n in range(12):
        async with store.transaction() as tx:
            event = await outbox.add(tx, f"p{n % 3}", "thing.changed", {"n": n})
        items.append(f"{event.aggregate}:{event.seq}")
    return store, outbox, items


def test_a_killed_relays_claims_pass_to_another_relay_when_its_etcd_lease_ends(
    etcd_cluster: EtcdCluster, postgres_url: str, tmp_path: Path
) -> None:
    async def main() -> None:
        store, outbox, items = await _outbox(postgres_url)
        with workers(tmp_path, "relay", postgres_url, _etcd(etcd_cluster)) as group:
            a, _ = group.start("a", at="hang")

            async def a_holds_all() -> bool:
                return len(await _effects(store)) == 1 and (await outbox.counts())[
                    "pending"
                ] == len(items)

            await _wait("relay a claims every event and hangs in its handler", a_holds_all)
            group.start("b")
            os.kill(a.pid, signal.SIGKILL)
            a.wait()

            async def all_delivered() -> bool:
                return (await outbox.counts())["delivered"] == len(items)

            await _wait("relay b delivers every event", all_delivered)
            effects = await _effects(store)
            assert {item for _, _, item in effects} == set(items)
            for aggregate in ("p0", "p1", "p2"):  # b in order per aggregate
                seqs = [
                    int(i.split(":")[1])
                    for w, _, i in effects
                    if w == "b" and i.startswith(f"{aggregate}:")
                ]
                assert seqs == sorted(seqs)
        await store.close()

    asyncio.run(main())


def test_a_paused_relay_hands_nothing_over_after_its_etcd_lease_ended(
    etcd_cluster: EtcdCluster, postgres_url: str, tmp_path: Path
) -> None:
    """Relay a stops (SIGSTOP) in its first handler call holding every event; b takes
    them over once etcd drops a's lease and delivers them. Resumed, a delivers nothing
    more under its old claims (its batch goes on with the next event without the
    check) and goes on under a new etcd lease."""

    async def main() -> None:
        store, outbox, items = await _outbox(postgres_url)
        with workers(tmp_path, "relay", postgres_url, _etcd(etcd_cluster)) as group:
            a, a_status = group.start("a", at="stop")

            async def a_paused() -> bool:
                return _stopped(a) and len(await _effects(store)) == 1

            await _wait("relay a stops in its first handler call", a_paused)
            (first,) = await _effects(store)
            old_owner = first[1]
            group.start("b")

            async def all_delivered() -> bool:
                return (await outbox.counts())["delivered"] == len(items)

            await _wait("relay b delivers every event", all_delivered)
            os.kill(a.pid, signal.SIGCONT)

            async def a_renewed() -> bool:
                status = _status(a_status)
                return status.get("terms", 0) >= 2 and status["owner"] != old_owner

            await _wait("relay a claims under a new etcd lease", a_renewed)
            by_old = [e for e in await _effects(store) if e[1] == old_owner]
            assert by_old == [first]  # nothing handed over after the pause
        await store.close()

    asyncio.run(main())


async def _sagas(url: str, ids: list[str]) -> tuple[RelationalStore, SagaEngine]:
    store = await _relational(url)
    await store.execute(EFFECTS)
    steps = saga(Effects(store, {}), [])  # never run here
    engine = SagaEngine(store, [steps])
    for saga_id in ids:
        await engine.enqueue(steps, {"n": saga_id}, saga_id=saga_id)
    return store, engine


async def _all_completed(engine: SagaEngine, ids: list[str]) -> bool:
    results = [await engine.result(i) for i in ids]
    return all(r.state is SagaState.COMPLETED for r in results)


def test_a_killed_saga_workers_sagas_pass_to_another_worker_when_its_etcd_lease_ends(
    etcd_cluster: EtcdCluster, postgres_url: str, tmp_path: Path
) -> None:
    async def main() -> None:
        ids = ["s0", "s1", "s2"]
        store, engine = await _sagas(postgres_url, ids)
        with workers(tmp_path, "saga", postgres_url, _etcd(etcd_cluster)) as group:
            a, _ = group.start("a", at="hang")

            async def a_runs() -> bool:
                return len(await _effects(store)) >= 1

            await _wait("worker a hangs in its first step", a_runs)
            first = (await _effects(store))[0]
            group.start("b")
            os.kill(a.pid, signal.SIGKILL)
            a.wait()
            await _wait("worker b completes every saga", lambda: _all_completed(engine, ids))
            effects = await _effects(store)
            hung = first[2].split(":")[0]
            assert ("b", hung) in {(w, i.split(":")[0]) for w, _, i in effects}
        await store.close()

    asyncio.run(main())


def test_a_paused_saga_worker_runs_no_step_after_its_etcd_lease_ended(
    etcd_cluster: EtcdCluster, postgres_url: str, tmp_path: Path
) -> None:
    """Worker a stops (SIGSTOP) inside a saga's first step, and stays stopped past its
    etcd lease; nobody else took the saga (its log lease is 600 s). Resumed, a logs
    nothing and runs no step under its old lease (without the check it would log the
    step and run the next at once): it takes a new lease, finds its old one dead, and
    resumes the saga from the log under the new one."""

    async def main() -> None:
        ids = ["s0"]
        store, engine = await _sagas(postgres_url, ids)
        etcd = _etcd(etcd_cluster)
        with workers(tmp_path, "saga", postgres_url, etcd) as group:
            a, a_status = group.start("a", at="stop")

            async def a_paused() -> bool:
                return _stopped(a) and len(await _effects(store)) == 1

            await _wait("worker a stops in its first step", a_paused)
            (first,) = await _effects(store)
            old_owner = first[1]
            leases = EtcdLeases(etcd)

            async def lease_gone() -> bool:
                return old_owner in await leases.dead(lease_group("sagas", store.url))

            await _wait("etcd drops a's lease", lease_gone)
            os.kill(a.pid, signal.SIGCONT)
            await _wait("worker a completes the saga", lambda: _all_completed(engine, ids))
            effects = await _effects(store)
            assert [e for e in effects if e[1] == old_owner] == [first]
            assert [i for _, _, i in effects] == ["s0:one", "s0:one", "s0:two", "s0:three"]
            assert _status(a_status)["terms"] >= 2
        await store.close()

    asyncio.run(main())


def test_lease_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="etcd://"):
        EtcdLeases("redis://127.0.0.1:6379/0")
    with pytest.raises(UsageError, match="ttl"):
        EtcdLeases("etcd://127.0.0.1:2379", ttl=0.5)
    config = tmp_path / "multistore.toml"
    config.write_text('[multistore]\nleases = "redis://127.0.0.1:6379/0"\n')
    with pytest.raises(ConfigError, match=r"multistore\.leases needs an etcd:// URL"):
        load_config(config)
    config.write_text('[multistore]\nleases = "etcd://10.0.0.1:2379,10.0.0.2:2379/?ttl=0.5"\n')
    with pytest.raises(ConfigError, match="ttl"):
        load_config(config)
    config.write_text('[multistore]\nleases = "etcd://10.0.0.1:2379,10.0.0.2:2379/?prefix=/s/"\n')
    leases = load_config(config).leases
    assert leases is not None
    assert leases.hosts == (("10.0.0.1", 2379), ("10.0.0.2", 2379))
    assert EtcdLeases(leases).prefix == "/s/"
    # Workers on other databases under one prefix are other groups.
    one = lease_group("sagas", parse_url("postgresql://u:p@db1:5432/shop"))
    assert one == lease_group("sagas", parse_url("postgresql://v@db1:5432/shop?timeout=3"))
    assert one != lease_group("sagas", parse_url("postgresql://u@db1:5432/other"))
    assert lease_group("outbox", parse_url("sqlite:///a.db"), "outbox").startswith("outbox/outbox/")


def test_the_cli_saga_worker_holds_the_configured_etcd_lease(
    etcd_cluster: EtcdCluster, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """`multistore sagas worker` with `multistore.leases` in its config registers in
    etcd while it runs (and its sagas run), and gives the lease up when it stops."""
    log_url, effects_url = postgres_server.create_database(), postgres_server.create_database()
    etcd = _etcd(etcd_cluster)
    config = tmp_path / "multistore.toml"
    config.write_text(f'[multistore]\nleases = "{etcd}"\n[roles]\nsagas = "{log_url}"\n')

    async def enqueue() -> None:
        effects, log = await _relational(effects_url), await _relational(log_url)
        async with effects, log, SagaEngine(log, SAGAS) as engine:
            for statement in TABLES:
                await effects.execute(statement)
            await engine.enqueue(SAGAS[0], {"amount": 1}, saga_id="c1")

    asyncio.run(enqueue())
    command = [sys.executable, "-m", "multistore", "sagas", "worker", "-c", str(config)]
    command += ["--definitions", "tests.consistency.worker_sagas:SAGAS", "--worker-id", "cli-w"]
    worker = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "SAGA_EFFECTS_URL": effects_url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    leases = EtcdLeases(etcd)
    live = f"{leases.prefix}leases/{lease_group('sagas', parse_url(log_url))}/live/"

    async def watch() -> None:
        log = await _relational(log_url)
        async with log, SagaEngine(log, SAGAS) as engine:

            async def registered() -> bool:
                found = await leases.client.get_prefix(live)
                return [v.key.decode()[len(live) :].split("@")[0] for v in found] == ["cli-w"]

            await _wait("the worker registers in etcd", registered)
            await _wait("the worker completes the saga", lambda: _all_completed(engine, ["c1"]))
        worker.send_signal(signal.SIGTERM)
        await asyncio.to_thread(worker.wait, 30)

        async def released() -> bool:
            return await leases.client.get_prefix(live) == []

        await _wait("the worker gives its lease up", released)

    try:
        asyncio.run(watch())
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
