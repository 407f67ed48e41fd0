"""``multistore lab engine``: a register workload against a real distributed engine
under faults, its history checked as Jepsen checks databases.

Targets, each started by the lab as throwaway processes (or handed in by a test):

- ``redis-cluster``: six Redis servers in cluster mode, the key-value store on them
  (``wait_replicas`` adds ``WAIT``). The workload's keys share one hash tag, so one
  primary and its replica hold them all and the faults hit every key. Faults:
  ``kill`` (SIGKILL that primary; its replica takes over; the old one comes back as a
  replica), ``pause`` (SIGSTOP that primary past the node timeout, then SIGCONT) and
  ``lagging-failover`` (the replica paused, a large write fills the replication
  link's socket buffers so that what follows stays in the primary's memory, the
  primary killed, the replica resumed and promoted: what Redis Cluster loses) and
  ``partition`` (the primary cut off from the other nodes — cluster bus and
  replication — through the TCP proxies the nodes announce, while clients still
  reach it: the majority promotes its replica, the old primary takes writes until it
  sees itself in the minority, and rejoins as a replica when the partition heals,
  dropping them).
- ``patroni``: three PostgreSQL members under Patroni on a three-member etcd, the
  workload through :class:`~multistore.replication.PatroniRouter` (writes on the
  leader, strong reads). ``synchronous`` turns on Patroni's synchronous mode for the
  run. Fault: ``kill`` (SIGKILL the leader, Patroni elects another).
- ``etcd``: three etcd members, the workload through the etcd client (linearizable
  reads). Fault: ``kill`` (SIGKILL the Raft leader).

Every operation is recorded (:class:`~multistore.lab._history.HistoryRecorder`); an
indeterminate error is ``info``. After the workload the fault is healed and every key
read once more; :func:`~multistore.core._history_report.check_history` then looks for
lost writes, stale reads and non-linearizable keys, and
:func:`~multistore.lab._report.summarize` gives the verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Final, Protocol

from multistore.core._history import EventType
from multistore.core._history_report import check_history
from multistore.errors import InvalidValueError, MultistoreError
from multistore.lab._etcd import EtcdCluster
from multistore.lab._history import HistoryRecorder, Processes
from multistore.lab._patroni import PatroniCluster
from multistore.lab._redis_cluster import RedisClusterServers
from multistore.lab._report import ANOMALY_KINDS, FINAL_PROCESS, Verdict, summarize

__all__ = ["ENGINE_FAULTS", "EngineLabOptions", "format_engine_report", "run_engine_lab"]

ENGINE_FAULTS: Final = {
    "redis-cluster": ("none", "kill", "pause", "lagging-failover", "partition"),
    "patroni": ("none", "kill"),
    "etcd": ("none", "kill"),
}
#: Larger than a loopback link's socket buffers (see ``lagging-failover``).
_FILLER: Final = 16 * 1024 * 1024


@dataclass(frozen=True)
class EngineLabOptions:
    """What ``multistore lab engine`` runs. ``duration`` seconds of workload by
    ``workers`` concurrent clients over ``keys`` registers; the fault starts at 30%
    of the run."""

    target: str = "redis-cluster"
    fault: str = "kill"
    keys: int = 3
    workers: int = 4
    duration: float = 6.0
    wait_replicas: int = 0
    synchronous: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.target not in ENGINE_FAULTS:
            raise InvalidValueError(
                f"unknown lab target {self.target!r}; targets: {', '.join(ENGINE_FAULTS)}"
            )
        if self.fault not in ENGINE_FAULTS[self.target]:
            raise InvalidValueError(
                f"fault {self.fault!r} does not apply to {self.target}; use one of "
                f"{', '.join(ENGINE_FAULTS[self.target])}"
            )
        if self.keys < 1 or self.workers < 1 or not self.duration > 0:
            raise InvalidValueError("keys and workers must be >= 1 and duration > 0")
        if self.wait_replicas and self.target != "redis-cluster":
            raise InvalidValueError("wait_replicas applies to the redis-cluster target only")
        if self.synchronous and self.target != "patroni":
            raise InvalidValueError("synchronous applies to the patroni target only")


class _Target(Protocol):
    async def write(self, key: str, value: int) -> None: ...
    async def read(self, key: str) -> int | None: ...
    async def add(self, element: int) -> None: ...
    async def elements(self) -> set[int]: ...
    async def fault(self, name: str) -> str: ...
    async def heal(self) -> None: ...
    async def close(self) -> None: ...


def _int(raw: object) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bytes | str):
        return int(raw)
    assert isinstance(raw, int)
    return raw


class _RedisClusterTarget:
    def __init__(self, cluster: RedisClusterServers, options: EngineLabOptions) -> None:
        self.cluster = cluster
        self.options = options
        self.store: Any = None
        self.down: list[Any] = []
        self.paused: list[Any] = []

    async def open(self) -> None:
        from multistore.stores import open_store

        query = "timeout=2"
        if self.options.wait_replicas:
            query += f"&wait_replicas={self.options.wait_replicas}&wait_timeout=0.3"
        self.store = await open_store(f"{self.cluster.url()}/?{query}", model="kv")
        # A fresh start on a cluster used before: the registers and the set.
        stale = await self.store.scan("{lab}:")
        if stale:
            await self.store.delete(*stale)

    @staticmethod
    def key(key: str) -> str:
        return "{lab}:" + key

    async def write(self, key: str, value: int) -> None:
        await self.store.set(self.key(key), str(value))

    async def read(self, key: str) -> int | None:
        return _int(await self.store.get(self.key(key)))

    async def add(self, element: int) -> None:
        await self.store.zadd("{lab}:set", {str(element): element})

    async def elements(self) -> set[int]:
        return {int(m) for m, _ in await self.store.zrange("{lab}:set", 0, -1)}

    async def fault(self, name: str) -> str:
        primary = await asyncio.to_thread(self.cluster.primary_for, "{lab}")
        if name == "partition":
            await asyncio.to_thread(self.cluster.partition, primary)
            promoted = await asyncio.to_thread(self.cluster.wait_promoted, primary)
            return (
                f"cut primary {primary.port} off from the other nodes (clients still reach it); "
                f"the majority promoted its replica {promoted.port}"
            )
        if name == "kill":
            await asyncio.to_thread(primary.kill)
            self.down.append(primary)
            promoted = await asyncio.to_thread(self.cluster.wait_promoted, primary)
            return f"killed the primary on port {primary.port}; {promoted.port} took over"
        if name == "pause":
            await asyncio.to_thread(primary.pause)
            self.paused.append(primary)
            promoted = await asyncio.to_thread(self.cluster.wait_promoted, primary)
            primary.resume()
            self.paused.remove(primary)
            return f"paused the primary on port {primary.port} until {promoted.port} took over"
        (replica,) = await asyncio.to_thread(self.cluster.replicas_of, primary)
        await asyncio.to_thread(replica.pause)
        self.paused.append(replica)
        await self._fill()
        await asyncio.sleep(self.options.duration * 0.2)  # writes pile up on the primary
        await asyncio.to_thread(primary.kill)
        self.down.append(primary)
        await asyncio.to_thread(replica.resume)
        self.paused.remove(replica)
        await asyncio.to_thread(self.cluster.wait_promoted, primary)
        return (
            f"paused replica {replica.port}, filled its link, killed primary "
            f"{primary.port}, resumed the replica, which took over"
        )

    async def _fill(self) -> None:
        """One write larger than the replication link's socket buffers, acknowledged by
        the primary (on a client of its own with a long timeout: it must arrive whole,
        or it would not be in the replication stream)."""
        from multistore.stores import open_store

        filler = await open_store(f"{self.cluster.url()}/?timeout=120", model="kv")
        try:
            await filler.set("{lab}:filler", b"x" * _FILLER)  # type: ignore[attr-defined]
        finally:
            await filler.close()

    async def heal(self) -> None:
        await asyncio.to_thread(self.cluster.heal)
        for node in self.paused:
            node.resume()
        self.paused.clear()
        for node in self.down:
            await asyncio.to_thread(node.start)
        await asyncio.to_thread(self.cluster.wait_ok)
        self.down.clear()

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()


class _PatroniTarget:
    def __init__(self, cluster: PatroniCluster, options: EngineLabOptions) -> None:
        self.cluster = cluster
        self.options = options
        self.router: Any = None
        self.down: list[Any] = []

    async def open(self) -> None:
        from multistore._http import http_json
        from multistore.replication import PatroniRouter, RouterConfig

        leader = await asyncio.to_thread(self.cluster.wait_leader)
        status, _ = await http_json(
            "PATCH", leader.rest_address, "/config", {"synchronous_mode": self.options.synchronous}
        )
        if status != 200:
            raise InvalidValueError(f"Patroni refused synchronous_mode: {status}")
        if self.options.synchronous:
            await asyncio.to_thread(self._wait_sync_standby)
        config = RouterConfig(probe_interval=0.2, probe_timeout=1.0, causal_wait=2.0)
        self.router = await PatroniRouter.open_patroni(
            self.cluster.rest_endpoints(), self.cluster.url() + "?connect_timeout=2", config=config
        )
        await self.router.execute(
            "CREATE TABLE IF NOT EXISTS lab_register (k TEXT PRIMARY KEY, v BIGINT NOT NULL)"
        )
        await self.router.execute("DELETE FROM lab_register")
        await self.router.execute("CREATE TABLE IF NOT EXISTS lab_set (v BIGINT PRIMARY KEY)")
        await self.router.execute("DELETE FROM lab_set")

    def _wait_sync_standby(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            members = self.cluster.cluster_view().get("members", [])
            if any(m.get("role") == "sync_standby" for m in members):
                return
            if time.monotonic() > deadline:
                raise TimeoutError("Patroni named no synchronous standby within 60 s")
            time.sleep(0.1)

    async def write(self, key: str, value: int) -> None:
        await self.router.execute(
            "INSERT INTO lab_register (k, v) VALUES (:k, :v) "
            "ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            {"k": key, "v": value},
        )

    async def read(self, key: str) -> int | None:
        value = await self.router.fetch_val(
            "SELECT v FROM lab_register WHERE k = :k", {"k": key}, strong=True
        )
        return _int(value)

    async def add(self, element: int) -> None:
        await self.router.execute("INSERT INTO lab_set (v) VALUES (:v)", {"v": element})

    async def elements(self) -> set[int]:
        rows = await self.router.fetch_all("SELECT v FROM lab_set", strong=True)
        return {int(row[0]) for row in rows}

    async def fault(self, name: str) -> str:
        leader = await asyncio.to_thread(self.cluster.wait_leader)
        await asyncio.to_thread(leader.kill)
        self.down.append(leader)
        return f"killed the Patroni leader {leader.member}"

    async def heal(self) -> None:
        for member in self.down:
            await asyncio.to_thread(member.start)
        self.down.clear()
        await asyncio.to_thread(self.cluster.wait_streaming)
        deadline = time.monotonic() + 60
        while not await self._router_follows():
            if time.monotonic() > deadline:
                raise TimeoutError("the router did not adopt Patroni's leader within 60 s")
            await asyncio.sleep(0.1)

    async def _router_follows(self) -> bool:
        with contextlib.suppress(MultistoreError):
            await self.router.follow()
        leader = self.cluster.leader()
        return leader is not None and self.router.primary.name == leader.member

    async def close(self) -> None:
        if self.router is not None:
            await self.router.close()
        with contextlib.suppress(OSError, MultistoreError):
            leader = self.cluster.leader()
            if leader is not None:
                from multistore._http import http_json

                await http_json(
                    "PATCH", leader.rest_address, "/config", {"synchronous_mode": False}
                )


class _EtcdTarget:
    def __init__(self, cluster: EtcdCluster, options: EngineLabOptions) -> None:
        from multistore._etcd import EtcdClient

        self.cluster = cluster
        self.client = EtcdClient(cluster.endpoints(), timeout=2.0)
        self.prefix = f"/lab/{random.getrandbits(32):08x}/"
        self.down: list[Any] = []

    async def open(self) -> None:
        return None

    async def _call(self, call: Awaitable[Any]) -> Any:
        from multistore._etcd import EtcdError
        from multistore.errors import Outcome, StoreUnavailableError

        try:
            return await call
        except EtcdError as exc:
            outcome = Outcome.INDETERMINATE if exc.sent else Outcome.DEFINITE
            raise StoreUnavailableError(str(exc), outcome=outcome) from exc

    async def write(self, key: str, value: int) -> None:
        await self._call(self.client.put(self.prefix + key, str(value)))

    async def read(self, key: str) -> int | None:
        found = await self._call(self.client.get(self.prefix + key))
        return None if found is None else int(found.value)

    async def add(self, element: int) -> None:
        await self._call(self.client.put(f"{self.prefix}set/{element}", ""))

    async def elements(self) -> set[int]:
        found = await self._call(self.client.get_prefix(f"{self.prefix}set/"))
        return {int(item.key.decode().rsplit("/", 1)[1]) for item in found}

    async def fault(self, name: str) -> str:
        leader = await asyncio.to_thread(self.cluster.leader)
        await asyncio.to_thread(leader.kill)
        self.down.append(leader)
        return f"killed the etcd leader {leader.member}"

    async def heal(self) -> None:
        for member in self.down:
            await asyncio.to_thread(member.start)
        self.down.clear()
        await asyncio.to_thread(self.cluster.wait_healthy)

    async def close(self) -> None:
        return None


async def _add(target: _Target, element: int, adds: dict[str, set[int]]) -> None:
    """Add ``element`` to the target's set; file it under ok, fail or info."""
    try:
        await target.add(element)
    except MultistoreError as exc:
        adds["fail" if exc.definite else "info"].add(element)
        await asyncio.sleep(0.05)
    except Exception:
        adds["info"].add(element)
        await asyncio.sleep(0.05)
    else:
        adds["ok"].add(element)


def _set_report(adds: dict[str, set[int]], present: set[int] | None) -> dict[str, Any]:
    """Jepsen's set check: every acknowledged add must be in the final read; an
    indeterminate one may be; a failed one must not."""
    if present is None:
        return {"read": False, "acknowledged": len(adds["ok"]), "lost": 0}
    lost = sorted(adds["ok"] - present)
    return {
        "read": True,
        "acknowledged": len(adds["ok"]),
        "lost": len(lost),
        "lost_examples": lost[:5],
        "indeterminate": len(adds["info"]),
        "indeterminate_present": len(adds["info"] & present),
        "failed_present": len(adds["fail"] & present),
        "unexpected": len(present - adds["ok"] - adds["info"] - adds["fail"]),
    }


def _bind(fn: Callable[..., Awaitable[Any]], *args: Any) -> Callable[[], Awaitable[Any]]:
    async def call() -> Any:
        return await fn(*args)

    return call


async def run_engine_lab(
    options: EngineLabOptions,
    *,
    topology: RedisClusterServers | PatroniCluster | EtcdCluster | None = None,
) -> dict[str, Any]:
    """Run the workload and the fault, heal, read every key, check; the report.
    ``topology``: a running cluster of the target's kind to use (else the lab starts
    one and removes it after)."""
    own = topology is None
    if options.target == "redis-cluster":
        cluster_r = topology if isinstance(topology, RedisClusterServers) else None
        cluster_r = cluster_r or RedisClusterServers(proxies=options.fault == "partition")
        topology = cluster_r
        target: Any = _RedisClusterTarget(cluster_r, options)
    elif options.target == "patroni":
        cluster_p = topology if isinstance(topology, PatroniCluster) else None
        cluster_p = cluster_p or PatroniCluster()
        topology = cluster_p
        target = _PatroniTarget(cluster_p, options)
    else:
        cluster_e = topology if isinstance(topology, EtcdCluster) else None
        cluster_e = cluster_e or EtcdCluster()
        topology = cluster_e
        target = _EtcdTarget(cluster_e, options)
    try:
        if own:
            await asyncio.to_thread(topology.start)
        await target.open()
        try:
            return await _run(target, options)
        finally:
            await target.close()
    finally:
        if own:
            await asyncio.to_thread(topology.cleanup)


async def _run(target: _Target, options: EngineLabOptions) -> dict[str, Any]:
    rng = random.Random(options.seed)
    recorder = HistoryRecorder()
    processes = Processes(options.workers)
    values = itertools.count(1)
    keys = [f"k{i}" for i in range(options.keys)]
    started = time.monotonic()
    stop = asyncio.Event()
    adds: dict[str, set[int]] = {"ok": set(), "fail": set(), "info": set()}
    faults: list[dict[str, Any]] = []

    async def worker(i: int) -> None:
        while not stop.is_set():
            key = rng.choice(keys)
            process = processes[i]
            dice = rng.random()
            if dice < 1 / 3:
                value = next(values)
                write = _bind(target.write, key, value)
                done = await recorder.call(process, "write", key, value, write)
            elif dice < 2 / 3:
                done = await recorder.call(process, "read", key, None, _bind(target.read, key))
            else:
                await _add(target, next(values), adds)
                continue
            if done.error is not None:
                if done.event.type is EventType.INFO:
                    processes.crashed(i)  # it may still be running: a new process id
                await asyncio.sleep(0.05)  # a failing target: do not spin

    async def nemesis() -> None:
        # The workload runs ``duration`` seconds, and at least a second past the fault.
        try:
            if options.fault != "none":
                await asyncio.sleep(options.duration * 0.3)
                at = round(time.monotonic() - started, 3)
                what = await target.fault(options.fault)
                faults.append({"at_s": at, "fault": what})
                await asyncio.sleep(1.0)
            await asyncio.sleep(max(0.0, started + options.duration - time.monotonic()))
        finally:
            stop.set()

    await asyncio.gather(nemesis(), *(worker(i) for i in range(options.workers)))
    await target.heal()
    for n, key in enumerate(keys):
        process = FINAL_PROCESS + n
        for _ in range(50):  # bounded: the target is whole again, reads succeed soon
            done = await recorder.call(process, "read", key, None, _bind(target.read, key))
            if done.error is None:
                break
            process += len(keys)
            await asyncio.sleep(0.2)
    present: set[int] | None = None
    for _ in range(50):
        try:
            present = await target.elements()
            break
        except Exception:  # the target is whole again: this ends soon
            await asyncio.sleep(0.2)
    report = summarize(check_history(recorder.events))
    report["set"] = _set_report(adds, present)
    if report["set"]["lost"]:
        report["verdict"], report["exit_code"] = "anomalies", Verdict.ANOMALIES.exit_code
    report["config"] = asdict(options)
    report["faults"] = faults
    report["elapsed_s"] = round(time.monotonic() - started, 3)
    return report


def format_engine_report(report: dict[str, Any]) -> str:
    """The report as readable lines (``--json`` prints it whole)."""
    config, counts = report["config"], report["counts"]
    extra = ""
    if config["wait_replicas"]:
        extra = f", WAIT for {config['wait_replicas']} replica(s)"
    if config["synchronous"]:
        extra = ", Patroni synchronous mode"
    lines = [
        f"lab engine: {config['target']}{extra}, fault {config['fault']}, "
        f"{config['workers']} workers on {config['keys']} keys for {config['duration']:g} s",
        f"  {counts['operations']} operations ({counts['ok']} ok, {counts['fail']} fail, "
        f"{counts['info']} info) in {report['elapsed_s']:.2f} s, then "
        f"{counts['final_reads']} final reads ({counts['final_reads_ok']} ok)",
    ]
    lines.extend(f"  fault at {f['at_s']:>6.2f} s: {f['fault']}" for f in report["faults"])
    verdict = Verdict(report["verdict"])
    lines.append(f"  verdict: {verdict.headline} (exit code {verdict.exit_code})")
    lines.extend(f"    {label:<28}{counts[name]}" for name, label in ANOMALY_KINDS)
    added = report["set"]
    lines.append(
        f"    {'lost acknowledged adds':<28}{added['lost']} of {added['acknowledged']}"
        + (f" (e.g. {added['lost_examples']})" if added.get("lost_examples") else "")
    )
    for kind, sentence in report.get("sentences", {}).items():
        lines.append(f"  {kind}: {sentence}")
    return "\n".join(lines)
