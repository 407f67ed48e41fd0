"""``multistore lab quorum``: a workload against a quorum cluster under faults, checked.

The lab starts its own topology — M embedded SQLite nodes, or M real Redis servers —
and (by default) two coordinators (clients of the cluster, as two application servers
would be), each with its own clock and its own connections to every node. Every
connection is a :class:`~multistore.lab._links.Link`: it can add latency to each
message leg (``latency="exp:1ms"``, see :mod:`multistore.lab._latency`), lose
requests, lose replies after the node applied the request, or refuse calls. Each
operation goes through a coordinator drawn at random (``routing="random"``), or
worker ``i`` sticks to coordinator ``i % C`` (``"sticky"``). The fault presets
(:data:`~multistore.lab._faults.PRESET_HELP`):

- ``kill``: a node crashes for everyone (a Redis server is SIGKILLed and restarted on
  the same port and data; an embedded node refuses every call, its file kept);
  ``kill-homes`` does it to two of the home nodes of key ``k0``;
- ``partition``: the network splits into {coordinator0, node0} and {the other
  coordinators, every other node}: each coordinator reaches only its side (Redis: each
  coordinator talks to each node through its own TCP proxy, and the proxies across the
  split blackhole their traffic; embedded: the links across the split lose every
  message). With a single coordinator it stays on the majority side and just loses
  node0;
- ``lost-replies``: coordinator0's requests reach every node and are applied, but the
  replies are lost: the coordinator times out on writes that took effect;
- ``latency``: node0 answers 50 ms late; ``skew``: the last coordinator's wall clock
  (the HLC it stamps writes with) runs 10 s ahead; ``chaos``: a random mix.

Two coordinators stamp writes with two independent hybrid logical clocks of
millisecond resolution, so last-writer-wins may order two writes acknowledged in the
same millisecond against real time; runs with heavy concurrency can show that as a
rare stale read even at R+W>N. ``coordinators=1`` rules it out.

After the workload the faults are healed, hints delivered, and every key read once
more at ``ALL`` (so a write that survives on any replica is not counted as lost).
The history is then checked (:func:`multistore.core._history_report.check_history`)
and, with a latency distribution, the measured staleness is set beside the PBS model
(:mod:`multistore.lab._pbs`). :mod:`multistore.lab._report` turns the result into
the report and its verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from multistore.core import VersionVector
from multistore.core._history import EventType
from multistore.core._history_report import check_history
from multistore.core._linearizability import DEFAULT_SEARCH_BOUND
from multistore.core._quorum import Consistency, Level, QuorumConfig
from multistore.errors import InvalidValueError, MultistoreError
from multistore.lab._faults import FAULT_PRESETS, FaultRunner, SkewedClock, preset_schedule
from multistore.lab._history import Completion, HistoryRecorder, write_history
from multistore.lab._latency import Latency, parse_latency
from multistore.lab._links import Link
from multistore.lab._pbs import pbs_model
from multistore.lab._redis import RedisServer, start_redis_cluster
from multistore.lab._report import FINAL_PROCESS, LabProgress, summarize
from multistore.lab._workload import (
    DEFAULT_MIX,
    Observed,
    RegisterClient,
    Workload,
    final_reads,
    parse_mix,
    run_workload,
)
from multistore.lab.proxy import TcpProxy
from multistore.replication import (
    HintStore,
    QuorumCluster,
    QuorumNode,
    RedisNode,
    SQLiteNode,
    WeakQuorumWarning,
    quorum_status,
)

__all__ = ["QuorumLabOptions", "lab_quorum", "run_quorum_lab"]

TOPOLOGIES: Final = ("embedded", "redis")
PROBE_KEY: Final = "k0"
"""The key whose homes ``kill-homes`` takes down."""


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
    latency: str = "none"
    """Delay of every message leg (see :mod:`multistore.lab._latency`)."""
    routing: str = "random"
    single_writer: bool = False
    """Each key written by one worker only (writes of a key never overlap)."""

    def __post_init__(self) -> None:
        if self.nodes not in TOPOLOGIES:
            raise InvalidValueError(f"nodes must be {' or '.join(TOPOLOGIES)}, got {self.nodes!r}")
        if self.faults not in FAULT_PRESETS:
            raise InvalidValueError(
                f"unknown fault preset {self.faults!r}; use one of {', '.join(FAULT_PRESETS)}"
            )
        if not 1 <= self.coordinators <= 8:
            raise InvalidValueError(f"coordinators must be 1 to 8, got {self.coordinators}")
        if not 1 <= self.n <= self.m:
            raise InvalidValueError(f"need 1 <= N <= M, got N={self.n} M={self.m}")
        if not self.timeout > 0:
            raise InvalidValueError(
                f"timeout must be above 0 seconds, got {self.timeout:g}: with no time to "
                "answer, every operation would fail and nothing could be checked"
            )
        if self.bound < 1:
            raise InvalidValueError(f"bound must be at least 1, got {self.bound}")
        self.config()  # validates R and W against N
        self.workload()  # validates ops, concurrency, keys, duration, mix and routing
        self.latency_model()

    def config(self) -> QuorumConfig:
        return QuorumConfig(n=self.n, r=_level(self.r), w=_level(self.w))

    def latency_model(self) -> Latency | None:
        return parse_latency(self.latency)

    def workload(self) -> Workload:
        return Workload(
            ops=self.ops,
            concurrency=self.concurrency,
            duration=self.duration,
            keys=self.keys,
            mix=parse_mix(self.mix),
            seed=self.seed,
            op_timeout=max(2.0, 8 * self.timeout),
            routing=self.routing,
            single_writer=self.single_writer,
        )


class _Client:
    """The workload's view of one coordinator."""

    def __init__(self, cluster: QuorumCluster, *, r: Level | None = None) -> None:
        self.cluster = cluster
        self.r = r

    async def read(self, key: str) -> Observed:
        got = await self.cluster.get(key, r=self.r)
        if not got.found:
            return Observed(None, got.context)
        value = got.value
        if value is not None and not isinstance(value, int | str):
            raise InvalidValueError(f"the lab reads ints, got {value!r}")
        return Observed(value, got.context)

    async def write(self, key: str, value: int, context: object | None = None) -> None:
        if not isinstance(context, VersionVector):
            context = None
        await self.cluster.put(key, value, context=context)


class _Topology:
    """M nodes and the coordinators, with the fault actions of :class:`FaultTarget`."""

    def __init__(self, options: QuorumLabOptions, workdir: Path) -> None:
        self.options = options
        self.workdir = workdir
        self.node_names = [f"node{i}" for i in range(options.m)]
        self.clocks = [SkewedClock() for _ in range(options.coordinators)]
        self.clusters: list[QuorumCluster] = []
        self.links: list[list[Link]] = []  # [coordinator][node]
        self.servers: list[RedisServer] = []
        self.proxies: list[list[TcpProxy]] = []  # [coordinator][node]

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        # R+W<=N is the point of some runs: the report carries the warning instead
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", WeakQuorumWarning)
            for c in range(self.options.coordinators):
                self.clusters.append(await self._coordinator(c))

    async def _nodes(self) -> list[QuorumNode]:
        options = self.options
        if options.nodes == "embedded":
            opened: list[QuorumNode] = []
            try:
                for name in self.node_names:
                    opened.append(await SQLiteNode(name, self.workdir / f"{name}.db").open())
            except BaseException:
                for node in opened:
                    await node.close()
                raise
            return opened
        if not self.servers:
            self.servers = await asyncio.to_thread(start_redis_cluster, options.m)
        row = [TcpProxy("127.0.0.1", server.port) for server in self.servers]
        self.proxies.append(row)
        for proxy in row:
            proxy.start()
        deadline = max(options.timeout, 1.0)
        return [
            RedisNode.from_url(name, f"redis://127.0.0.1:{proxy.port}/0", timeout=deadline)
            for name, proxy in zip(self.node_names, row, strict=True)
        ]

    async def _coordinator(self, c: int) -> QuorumCluster:
        options, clock = self.options, self.clocks[c]
        latency = options.latency_model()
        hang = 4 * options.timeout + 1.0  # past the coordinator's timeout, which fires first
        links = [
            Link(node, latency=latency, rng=random.Random(f"{options.seed}:{c}:{i}"), hang=hang)
            for i, node in enumerate(await self._nodes())
        ]
        self.links.append(links)
        hints = await HintStore.open(self.workdir / f"hints{c}.db")
        return QuorumCluster(
            links,
            hints=hints,
            config=options.config(),
            timeout=options.timeout,
            node_id=f"coordinator{c}",
            hlc_now_ms=lambda: int(clock() * 1000),
        )

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

    def message_counts(self) -> dict[str, int]:
        """Requests sent, applied, refused and lost, and replies lost, over every link."""
        names = ("requests", "applied", "refused", "requests_lost", "replies_lost")
        return {
            name: sum(getattr(link.counts, name) for row in self.links for link in row)
            for name in names
        }

    # -- faults -------------------------------------------------------------------------

    def _index(self, node: str) -> int:
        try:
            return self.node_names.index(node)
        except ValueError:
            raise InvalidValueError(
                f"no node {node!r}; nodes are {', '.join(self.node_names)}"
            ) from None

    def _coordinator_index(self, name: str) -> int | None:
        number = name.removeprefix("coordinator")
        if not name.startswith("coordinator") or not number.isdigit():
            return None
        if int(number) >= len(self.clusters):
            last = len(self.clusters) - 1
            raise InvalidValueError(f"no {name}: use coordinator0 to coordinator{last}")
        return int(number)

    def _column(self, node: str) -> list[Link]:
        i = self._index(node)
        return [row[i] for row in self.links]

    async def kill(self, node: str) -> None:
        if self.servers:
            await asyncio.to_thread(self.servers[self._index(node)].kill)
        else:
            for link in self._column(node):
                link.refused = True

    async def restart(self, node: str) -> None:
        if self.servers:
            await asyncio.to_thread(self.servers[self._index(node)].start)
        else:
            for link in self._column(node):
                link.refused = False

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
                self.links[c][j].cut = True

    async def heal(self, node: str) -> None:
        for c, j in self._split(node):
            if self.proxies:
                await asyncio.to_thread(self.proxies[c][j].restore)
            else:
                self.links[c][j].cut = False

    async def delay(self, node: str, seconds: float) -> None:
        i = self._index(node)
        if self.proxies:
            for row in self.proxies:
                row[i].delay(seconds)
        else:
            for link in self._column(node):
                link.extra_delay = seconds

    async def lose_replies(self, node: str, lose: bool) -> None:
        c = self._coordinator_index(node)
        for link in self.links[c] if c is not None else self._column(node):
            link.lose_replies = lose

    async def skew(self, node: str, ms: float) -> None:
        c = self._coordinator_index(node)
        if c is None:
            last = len(self.clocks) - 1
            raise InvalidValueError(f"no clock {node!r}: use coordinator0 to coordinator{last}")
        self.clocks[c].offset_ms = ms


class _Tally:
    """Counts completed operations for the progress display."""

    def __init__(
        self, total: int, runner: FaultRunner, report: Callable[[LabProgress], None] | None
    ) -> None:
        self.total = total
        self.runner = runner
        self.report = report
        self.counts = {EventType.OK: 0, EventType.FAIL: 0, EventType.INFO: 0}

    def phase(self, name: str) -> None:
        if self.report is not None:
            c = self.counts
            done = sum(c.values())
            faults = tuple(self.runner.in_effect)
            ok, fail, info = c[EventType.OK], c[EventType.FAIL], c[EventType.INFO]
            self.report(LabProgress(name, done, self.total, ok, fail, info, faults))

    def __call__(self, done: Completion) -> None:
        self.counts[done.type] += 1
        self.phase("workload")


async def run_quorum_lab(
    options: QuorumLabOptions,
    *,
    history: str | Path | None = None,
    plot: str | Path | None = None,
    workdir: str | Path | None = None,
    progress: Callable[[LabProgress], None] | None = None,
) -> dict[str, Any]:
    """Run the lab and return the report (see :func:`lab_quorum`).

    ``progress`` hears where the run is after every operation. A plot that cannot be
    drawn leaves ``plot_error`` in the report instead of raising (the results stand).
    """
    workload = options.workload()
    latency = options.latency_model()
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="mslab-"))
        topology = _Topology(options, Path(workdir))
        try:
            if progress is not None:
                progress(LabProgress("starting", 0, options.ops))
            await topology.start()
            homes = topology.clusters[0].preference_list(PROBE_KEY)
            schedule = preset_schedule(
                options.faults,
                topology.node_names,
                options.duration,
                clock_node=f"coordinator{options.coordinators - 1}",
                seed=options.seed,
                homes=homes,
            )
            recorder = HistoryRecorder()  # time 0 of the history: the workload starts
            runner = FaultRunner(schedule, topology, clock=lambda: recorder.now() / 1e9)
            tally = _Tally(options.ops, runner, progress)
            started = time.monotonic()
            faults = asyncio.ensure_future(runner.run(origin=0.0))
            try:
                await run_workload(topology.clients(), recorder, workload, on_operation=tally)
            finally:
                if not faults.done():
                    faults.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await faults
            elapsed = time.monotonic() - started
            tally.phase("healing")
            workload_end = recorder.now() / 1e9
            windows = runner.windows(until=workload_end)
            await runner.heal()
            delivered = 0
            for cluster in topology.clusters:
                delivered += await cluster.deliver_hints()
            tally.phase("final reads")
            final = _Client(topology.clusters[0], r=Consistency.ALL)
            await final_reads(final, recorder, workload, process=FINAL_PROCESS, attempts=5)
            status = [await quorum_status(cluster) for cluster in topology.clusters]
            speculative = topology.clusters[0].speculative_after
            messages = topology.message_counts()
        finally:
            await topology.close()
    tally.phase("checking")
    events = recorder.events
    checked = check_history(events, bound=options.bound)
    config = options.config()
    model = None
    if latency is not None:
        model = pbs_model(
            config.n,
            config.read_count,
            config.write_count,
            latency,
            seed=options.seed,
            speculative_ms=None if speculative is None else speculative * 1e3,
        )
    result: dict[str, Any] = {
        "config": {
            **asdict(options),
            "r": config.read_count,
            "w": config.write_count,
            "overlapping": config.overlapping,
        },
        "warning": config.warning(),
        "faults": runner.log,
        "fault_windows": windows,
        "homes": {PROBE_KEY: list(homes)},
        "elapsed_s": round(elapsed, 3),
        "workload_s": round(workload_end, 3),
        "hints_delivered": delivered,
        "messages": messages,
        "cluster_status": status,
        **summarize(checked, model=model, latency=latency),
    }
    if history is not None:
        write_history(events, history, faults=runner.log)
        result["history"] = str(history)
    if plot is not None:
        try:
            from multistore.lab._plot import plot_report

            title = f"{config.describe()}, M={options.m} {options.nodes}, faults: {options.faults}"
            result["plot"] = str(
                plot_report(plot, result, checked.operations, model=model, title=title)
            )
        except MultistoreError as exc:
            result["plot_error"] = exc.message
    return result


def lab_quorum(
    *,
    history: Path | None = None,
    plot: Path | None = None,
    progress: Callable[[LabProgress], None] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The CLI command body: run the lab, return the report as a JSON-ready dict.

    ``options`` are the fields of :class:`QuorumLabOptions`. Keys of the report:
    ``config``, ``warning`` (R+W<=N), ``faults`` (what was done when),
    ``fault_windows``, ``verdict`` and ``exit_code`` (see
    :mod:`multistore.lab._report`), ``valid``, ``counts`` (operations, stale_reads,
    lost_writes, failed_writes_observed, monotonic_violations, phantom_reads,
    non_linearizable_keys, unknown_keys …), ``examples`` of each anomaly and one
    ``sentences`` line per kind, ``linearizability`` per key, ``staleness`` (PBS:
    P(consistent read) by ms since the write, measured and modelled), ``latency``
    per operation (p50/p90/p99/max ms), ``history`` and ``plot`` paths.
    """
    lab_options = QuorumLabOptions(**options)
    return asyncio.run(run_quorum_lab(lab_options, history=history, plot=plot, progress=progress))
