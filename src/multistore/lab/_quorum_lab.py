"""``multistore lab quorum``: a workload against a quorum cluster under faults, checked.

The lab starts its own topology — M embedded SQLite nodes, or M real Redis servers —
and (by default) two coordinators (clients of the cluster, as two application servers
would be), each with its own clock and its own connections to every node. Workers
alternate between the coordinators. Faults:

- ``kill``: a node crashes for everyone (a Redis server is SIGKILLed and restarted on
  the same port and data; an embedded node is marked down, its file kept);
- ``partition``: the network splits into {coordinator0, node0} and {the other
  coordinators, every other node}: each coordinator reaches only its side (Redis: each
  coordinator talks to each node through its own TCP proxy, and the proxies across the
  split blackhole their traffic; embedded: each coordinator's handles on the other
  side's nodes fail). With a single coordinator it stays on the majority side and
  just loses node0;
- ``latency``: node0 answers 50 ms late; ``skew``: the last coordinator's wall clock
  (the HLC it stamps writes with) runs 10 s ahead; ``chaos``: a random mix.

Two coordinators stamp writes with two independent hybrid logical clocks of
millisecond resolution, so last-writer-wins may order two writes acknowledged in the
same millisecond against real time; runs with heavy concurrency can show that as a
rare stale read even at R+W>N. ``coordinators=1`` rules it out.

After the workload the faults are healed, hints delivered, and every key read once
more at ``ALL`` (so a write that survives on any replica is not counted as lost).
The history is then checked (:func:`multistore.core._history_report.check_history`).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from multistore.core._history import Value
from multistore.core._history_report import check_history
from multistore.core._linearizability import DEFAULT_SEARCH_BOUND
from multistore.core._quorum import Consistency, Level, QuorumConfig
from multistore.errors import InvalidValueError
from multistore.lab._faults import FAULT_PRESETS, FaultRunner, SkewedClock, preset_schedule
from multistore.lab._history import HistoryRecorder, write_history
from multistore.lab._redis import RedisServer, start_redis_cluster
from multistore.lab._workload import (
    DEFAULT_MIX,
    RegisterClient,
    Workload,
    final_reads,
    parse_mix,
    run_workload,
)
from multistore.lab.proxy import TcpProxy
from multistore.replication._qnodes import SQLiteNode
from multistore.replication._quorum import QuorumCluster, WeakQuorumWarning, quorum_status

__all__ = ["QuorumLabOptions", "format_lab_report", "lab_quorum", "run_quorum_lab"]

TOPOLOGIES: Final = ("embedded", "redis")
_FINAL_PROCESS: Final = 1_000_000


def _level(text: str | int) -> Level:
    if isinstance(text, int):
        return text
    try:
        return Consistency(text.lower())
    except ValueError:
        if text.isdigit():
            return int(text)
        raise InvalidValueError(
            f"unknown consistency level {text!r}; use one, quorum, all or a number"
        ) from None


@dataclass(frozen=True, slots=True)
class QuorumLabOptions:
    n: int = 3
    r: str | int = "quorum"
    w: str | int = "quorum"
    m: int = 3
    ops: int = 600
    concurrency: int = 6
    duration: float = 4.0
    keys: int = 4
    mix: str = DEFAULT_MIX
    seed: int = 0
    nodes: str = "embedded"
    faults: str = "none"
    timeout: float = 0.5
    """Per-replica request timeout (seconds)."""
    coordinators: int = 2
    bound: int = DEFAULT_SEARCH_BOUND

    def __post_init__(self) -> None:
        if self.nodes not in TOPOLOGIES:
            raise InvalidValueError(f"nodes must be one of {TOPOLOGIES}, got {self.nodes!r}")
        if self.faults not in FAULT_PRESETS:
            raise InvalidValueError(f"unknown fault preset {self.faults!r}; use {FAULT_PRESETS}")
        if not 1 <= self.coordinators <= 8:
            raise InvalidValueError(f"coordinators must be 1 … 8, got {self.coordinators}")
        if not 1 <= self.n <= self.m:
            raise InvalidValueError(f"need 1 <= N <= M, got N={self.n} M={self.m}")
        self.config()  # validates R and W against N

    def config(self) -> QuorumConfig:
        return QuorumConfig(n=self.n, r=_level(self.r), w=_level(self.w))

    def workload(self) -> Workload:
        return Workload(
            ops=self.ops,
            concurrency=self.concurrency,
            duration=self.duration,
            keys=self.keys,
            mix=parse_mix(self.mix),
            seed=self.seed,
            op_timeout=max(2.0, 8 * self.timeout),
        )


class _Client:
    """The workload's view of one coordinator."""

    def __init__(self, cluster: QuorumCluster, *, r: Level | None = None) -> None:
        self.cluster = cluster
        self.r = r

    async def read(self, key: str) -> Value:
        got = await self.cluster.get(key, r=self.r)
        if not got.found:
            return None
        value = got.value
        if value is not None and not isinstance(value, int | str):
            raise InvalidValueError(f"the lab reads ints, got {value!r}")
        return value

    async def write(self, key: str, value: int) -> None:
        await self.cluster.put(key, value)


class _Topology:
    """M nodes and the coordinators, with the fault actions of :class:`FaultTarget`."""

    def __init__(self, options: QuorumLabOptions, workdir: Path) -> None:
        self.options = options
        self.workdir = workdir
        self.node_names = [f"node{i}" for i in range(options.m)]
        self.clocks = [SkewedClock() for _ in range(options.coordinators)]
        self.clusters: list[QuorumCluster] = []
        self.servers: list[RedisServer] = []
        self.proxies: list[list[TcpProxy]] = []  # [coordinator][node]

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        # R+W<=N is the point of some runs: the report carries the warning instead
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", WeakQuorumWarning)
            for c in range(self.options.coordinators):
                self.clusters.append(await self._coordinator(c))

    async def _coordinator(self, c: int) -> QuorumCluster:
        options, clock = self.options, self.clocks[c]
        common: dict[str, Any] = {
            "config": options.config(),
            "timeout": options.timeout,
            "node_id": f"coordinator{c}",
            "hlc_now_ms": lambda: int(clock() * 1000),
            "hints_path": str(self.workdir / f"hints{c}.db"),
        }
        if options.nodes == "embedded":
            return await QuorumCluster.embedded(str(self.workdir), nodes=options.m, **common)
        if not self.servers:
            self.servers = await asyncio.to_thread(start_redis_cluster, options.m)
        row = [TcpProxy("127.0.0.1", server.port) for server in self.servers]
        self.proxies.append(row)
        for proxy in row:
            proxy.start()
        urls = [f"redis://127.0.0.1:{proxy.port}/0" for proxy in row]
        return await QuorumCluster.redis(urls, **common)

    async def close(self) -> None:
        for cluster in self.clusters:
            with contextlib.suppress(Exception):
                await cluster.wait_background()
            await cluster.close()
        for row in self.proxies:
            for proxy in row:
                await asyncio.to_thread(proxy.stop)
        for server in self.servers:
            await asyncio.to_thread(server.cleanup)

    def clients(self) -> list[RegisterClient]:
        return [_Client(cluster) for cluster in self.clusters]

    # -- faults -------------------------------------------------------------------------

    def _index(self, node: str) -> int:
        try:
            return self.node_names.index(node)
        except ValueError:
            raise InvalidValueError(f"no node {node!r} in {self.node_names}") from None

    def _embedded(self, c: int, node: str) -> SQLiteNode:
        handle = self.clusters[c].node(node)
        assert isinstance(handle, SQLiteNode)
        return handle

    def _handles(self, node: str) -> list[SQLiteNode]:
        return [self._embedded(c, node) for c in range(len(self.clusters))]

    async def kill(self, node: str) -> None:
        if self.servers:
            await asyncio.to_thread(self.servers[self._index(node)].kill)
        else:
            for handle in self._handles(node):
                handle.set_down(True)

    async def restart(self, node: str) -> None:
        if self.servers:
            await asyncio.to_thread(self.servers[self._index(node)].start)
        else:
            for handle in self._handles(node):
                handle.set_down(False)

    def _split(self, node: str) -> list[tuple[int, int]]:
        """(coordinator, node index) pairs cut by a split {c0, node} | {others, the rest};
        a lone coordinator stays with the majority and only loses ``node``."""
        i = self._index(node)
        if len(self.clusters) == 1:
            return [(0, i)]
        pairs = [(0, j) for j in range(len(self.node_names)) if j != i]
        return [*pairs, *((c, i) for c in range(1, len(self.clusters)))]

    async def partition(self, node: str) -> None:
        for c, j in self._split(node):
            if self.proxies:
                await asyncio.to_thread(self.proxies[c][j].blackhole)
            else:
                self._embedded(c, self.node_names[j]).set_down(True)

    async def heal(self, node: str) -> None:
        for c, j in self._split(node):
            if self.proxies:
                await asyncio.to_thread(self.proxies[c][j].restore)
            else:
                self._embedded(c, self.node_names[j]).set_down(False)

    async def delay(self, node: str, seconds: float) -> None:
        i = self._index(node)
        if self.proxies:
            for row in self.proxies:
                row[i].delay(seconds)
        else:
            for handle in self._handles(node):
                handle.set_delay(seconds)

    async def skew(self, node: str, ms: float) -> None:
        name = node.removeprefix("coordinator")
        if not name.isdigit() or int(name) >= len(self.clocks):
            raise InvalidValueError(f"no clock {node!r}: use coordinator0 … {len(self.clocks) - 1}")
        self.clocks[int(name)].offset_ms = ms


async def run_quorum_lab(
    options: QuorumLabOptions,
    *,
    history: str | Path | None = None,
    plot: str | Path | None = None,
    workdir: str | Path | None = None,
) -> dict[str, Any]:
    """Run the lab and return the report (see :func:`lab_quorum`)."""
    workload = options.workload()
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="mslab-"))
        topology = _Topology(options, Path(workdir))
        recorder = HistoryRecorder()
        schedule = preset_schedule(
            options.faults,
            topology.node_names,
            options.duration,
            clock_node=f"coordinator{options.coordinators - 1}",
            seed=options.seed,
        )
        runner = FaultRunner(schedule, topology)
        started = time.monotonic()
        delivered = 0
        try:
            await topology.start()
            faults = asyncio.ensure_future(runner.run())
            try:
                await run_workload(topology.clients(), recorder, workload)
            finally:
                if not faults.done():
                    faults.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await faults
            elapsed = time.monotonic() - started
            await runner.heal()
            for cluster in topology.clusters:
                delivered += await cluster.deliver_hints()
            final = _Client(topology.clusters[0], r=Consistency.ALL)
            await final_reads(final, recorder, workload, process=_FINAL_PROCESS, attempts=5)
            status = [await quorum_status(cluster) for cluster in topology.clusters]
        finally:
            await topology.close()
    report = check_history(recorder.events, bound=options.bound)
    config = options.config()
    result: dict[str, Any] = {
        "config": {
            **asdict(options),
            "r": config.read_count,
            "w": config.write_count,
            "overlapping": config.overlapping,
        },
        "warning": config.warning(),
        "faults": runner.log,
        "elapsed_s": round(elapsed, 3),
        "throughput_ops_s": round(len(report.operations) / elapsed, 1) if elapsed else None,
        "hints_delivered": delivered,
        "cluster_status": status,
        **report.to_dict(),
    }
    if history is not None:
        write_history(recorder.events, history)
        result["history"] = str(history)
    if plot is not None:
        from multistore.lab._plot import plot_report

        title = f"{config.describe()}, M={options.m} {options.nodes}, faults: {options.faults}"
        result["plot"] = str(plot_report(plot, report.staleness, report.operations, title=title))
    return result


def lab_quorum(
    *,
    n: int = 3,
    r: str = "quorum",
    w: str = "quorum",
    m: int = 3,
    ops: int = 600,
    concurrency: int = 6,
    duration: float = 4.0,
    keys: int = 4,
    mix: str = DEFAULT_MIX,
    seed: int = 0,
    nodes: str = "embedded",
    faults: str = "none",
    timeout: float = 0.5,
    coordinators: int = 2,
    history: Path | None = None,
    plot: Path | None = None,
) -> dict[str, Any]:
    """The CLI command body: run the lab, return the report as a JSON-ready dict.

    Keys: ``config``, ``warning`` (R+W<=N), ``faults`` (what was done when), ``valid``,
    ``counts`` (stale_reads, lost_writes, monotonic_violations, phantom_reads,
    non_linearizable_keys, unknown_keys …), ``examples`` of each anomaly,
    ``linearizability`` per key, ``staleness`` (PBS: P(stale) by ms since the write),
    ``latency`` per operation (p50/p90/p99/max ms), ``history`` and ``plot`` paths.
    """
    options = QuorumLabOptions(
        n=n,
        r=r,
        w=w,
        m=m,
        ops=ops,
        concurrency=concurrency,
        duration=duration,
        keys=keys,
        mix=mix,
        seed=seed,
        nodes=nodes,
        faults=faults,
        timeout=timeout,
        coordinators=coordinators,
    )
    return asyncio.run(run_quorum_lab(options, history=history, plot=plot))


def format_lab_report(report: dict[str, Any]) -> str:
    """The report as a few readable lines (what ``--json`` prints in full)."""
    cfg, counts = report["config"], report["counts"]
    overlap = "R+W>N" if cfg["overlapping"] else "R+W<=N"
    lines = [
        f"quorum lab: N={cfg['n']} R={cfg['r']} W={cfg['w']} ({overlap}), M={cfg['m']} "
        f"{cfg['nodes']} nodes, {cfg['coordinators']} coordinators, faults: {cfg['faults']}",
        f"  {counts['operations']} operations ({counts['ok']} ok) in {report['elapsed_s']} s",
    ]
    if report.get("warning"):
        lines.append(f"  warning: {report['warning']}")
    lines.extend(f"  fault at {f['at_s']:>6} s: {f['fault']}" for f in report["faults"])
    verdict = {True: "VALID", False: "ANOMALIES FOUND", None: "UNKNOWN (search bound hit)"}
    lines.append(f"  verdict: {verdict[report['valid']]}")
    for name in (
        "stale_reads",
        "lost_writes",
        "unverified_writes",
        "monotonic_violations",
        "phantom_reads",
        "non_linearizable_keys",
        "unknown_keys",
    ):
        lines.append(f"    {name.replace('_', ' '):<24}{counts[name]}")
    lines.append("  latency (ms)      ok   fail  info    p50     p90     p99")
    for f, row in report["latency"].items():
        pct = "".join(f"{row.get(f'p{q}_ms', float('nan')):>8.2f}" for q in (50, 90, 99))
        lines.append(f"    {f:<12}{row['ok']:>6}{row['fail']:>7}{row['info']:>6}{pct}")
    lines.append("  P(stale read) by time since the latest acknowledged write:")
    for bucket in report["staleness"]:
        if not bucket["reads"]:
            continue
        hi = "inf" if bucket["to_ms"] is None else f"{bucket['to_ms']:g}"
        span = f"{bucket['from_ms']:g}-{hi} ms"
        lines.append(f"    {span:<14}{bucket['p_stale']:>7.1%}  of {bucket['reads']} reads")
    for key in ("history", "plot"):
        if key in report:
            lines.append(f"  {key}: {report[key]}")
    return "\n".join(lines)
