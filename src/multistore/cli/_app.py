"""Command definitions. Each command that reports has ``--json``; errors print one
line and exit with the code of :class:`~multistore.errors.ErrorCode`."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from multistore.errors import ErrorCode, MultistoreError

T = TypeVar("T")

app = typer.Typer(
    name="multistore",
    help="Data management in distributed systems: polyglot stores, cross-store "
    "consistency and replication on real databases.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Path to multistore.toml (default: $MULTISTORE_CONFIG, then ./multistore.toml, "
        "then embedded stores under ./.multistore/).",
        dir_okay=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _fail(exc: MultistoreError) -> typer.Exit:
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    err.print(f"[bold red]error[/]{escape(f'[{exc.code.slug}]: {exc.message}')}")
    return typer.Exit(code=int(exc.code))


def _guard(fn: Callable[[], T]) -> T:
    """Run a command body: MultistoreError -> one line and its exit code; anything
    unexpected -> one line, exit 1 (set MULTISTORE_DEBUG=1 for the traceback)."""
    try:
        return fn()
    except MultistoreError as exc:
        raise _fail(exc) from None
    except (typer.Exit, KeyboardInterrupt):
        raise
    except Exception as exc:
        if os.environ.get("MULTISTORE_DEBUG"):
            raise
        err = Console(stderr=True, highlight=False, soft_wrap=True)
        err.print(
            "[bold red]error[/]"
            + escape(f"[unknown]: {type(exc).__name__}: {exc} ")
            + "(set MULTISTORE_DEBUG=1 for the traceback)"
        )
        raise typer.Exit(code=int(ErrorCode.UNKNOWN)) from None


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@app.command()
def demo(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Run the seed's e-commerce system end to end on the configured stores
    (embedded by default) and print what each part did."""

    def body() -> None:
        from multistore.cli._demo import run_demo

        report = asyncio.run(run_demo(config, quiet=as_json))
        if as_json:
            _print_json(report)

    _guard(body)


@app.command()
def status(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Show every role's store: model, backend, URL (password hidden) and whether it opens."""

    def body() -> None:
        from multistore.cli._demo import run_status

        report = asyncio.run(run_status(config, quiet=as_json))
        if as_json:
            _print_json(report)
        if any(not r["ok"] for r in report["roles"]) or any(
            not part["ok"] for part in report["replication"].values()
        ):
            raise typer.Exit(code=int(ErrorCode.STORE_UNAVAILABLE))

    _guard(body)


@app.command()
def bench(
    name: Annotated[str, typer.Argument(help="Benchmark name: a module in benchmarks/.")],
    as_json: JsonOption = False,
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="Folder holding the benchmarks (default: ./benchmarks)."),
    ] = None,
) -> None:
    """Run benchmarks/NAME and print ours vs the anchor as ratios (above 1 = ours better)."""

    def body() -> None:
        from multistore.cli._bench import print_rows, run_benchmark

        rows = run_benchmark(name, directory, progress=not as_json)
        if as_json:
            _print_json(rows)
        else:
            print_rows(name, rows)

    _guard(body)


@app.command()
def sagas(
    config: ConfigOption = None,
    as_json: JsonOption = False,
    state: Annotated[
        str | None,
        typer.Option("--state", help="Only sagas in this state (e.g. stuck, running)."),
    ] = None,
    saga_id: Annotated[
        str | None, typer.Option("--id", help="Show one saga with its step history.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 100,
) -> None:
    """List sagas in the saga log (the `sagas` role), or show one with its steps."""

    def body() -> None:
        from multistore.cli._ops import run_sagas

        report = asyncio.run(
            run_sagas(config, state=state, saga_id=saga_id, limit=limit, quiet=as_json)
        )
        if as_json:
            _print_json(report)

    _guard(body)


@app.command()
def recover(
    config: ConfigOption = None,
    as_json: JsonOption = False,
    participant: Annotated[
        list[str] | None,
        typer.Option(
            "--participant",
            "-p",
            help="A 2PC participant as NAME=URL (repeatable; adds to [participants]).",
        ),
    ] = None,
    retry_for: Annotated[
        float, typer.Option("--retry-for", min=0, help="Keep retrying down participants (s).")
    ] = 0.0,
    sagas: Annotated[
        str | None,
        typer.Option(
            "--sagas",
            help="MODULE:ATTRIBUTE naming your Saga definitions; stuck sagas are retried.",
        ),
    ] = None,
) -> None:
    """Resolve in-doubt two-phase-commit transactions from the decision log (the
    `transactions` role), list stuck sagas, and retry them given --sagas."""

    def body() -> None:
        from multistore.cli._ops import run_recover

        report = asyncio.run(
            run_recover(
                config,
                participants=participant or [],
                retry_for=retry_for,
                quiet=as_json,
                sagas=sagas,
            )
        )
        if as_json:
            _print_json(report)
        if not report["transactions"].get("resolved", True):
            raise typer.Exit(code=int(ErrorCode.TRANSACTION_INDETERMINATE))

    _guard(body)


lab_app = typer.Typer(
    help="Fault-injection labs: run a workload under faults and check the history.",
    no_args_is_help=True,
)
app.add_typer(lab_app, name="lab")


@lab_app.command("quorum")
def lab_quorum_command(
    n: Annotated[int, typer.Option("--n", "-n", help="Replication factor N.")] = 3,
    r: Annotated[
        str, typer.Option("--r", "-r", help="Read level: one, quorum, all or a number.")
    ] = "quorum",
    w: Annotated[
        str, typer.Option("--w", "-w", help="Write level: one, quorum, all or a number.")
    ] = "quorum",
    m: Annotated[int, typer.Option("--m", "-m", help="Nodes in the cluster (N <= M).")] = 3,
    ops: Annotated[int, typer.Option(help="Operations in the workload.")] = 600,
    concurrency: Annotated[int, typer.Option(help="Concurrent workers.")] = 6,
    duration: Annotated[float, typer.Option(help="Seconds the operations are spread over.")] = 4.0,
    keys: Annotated[int, typer.Option(help="Distinct keys (registers).")] = 4,
    mix: Annotated[
        str, typer.Option(help="Operation weights, e.g. read=0.5,write=0.3,rmw=0.2.")
    ] = "read=0.5,write=0.3,rmw=0.2",
    seed: Annotated[int, typer.Option(help="Random seed of the workload and chaos.")] = 0,
    nodes: Annotated[
        str, typer.Option(help="Topology: embedded (SQLite nodes) or redis (real servers).")
    ] = "embedded",
    faults: Annotated[
        str,
        typer.Option(
            help="Fault schedule: none, kill, kill-homes, partition, lost-replies, latency, "
            "skew or chaos."
        ),
    ] = "none",
    latency: Annotated[
        str,
        typer.Option(
            help="Delay of every message leg: fixed:2ms, uniform:1ms..5ms, exp:1ms, "
            "pareto:1ms,2, lognormal:1ms,0.5 or none."
        ),
    ] = "none",
    routing: Annotated[
        str,
        typer.Option(help="random: each operation through any coordinator; sticky: one each."),
    ] = "random",
    single_writer: Annotated[
        bool,
        typer.Option(
            "--single-writer",
            help="Each key written by one worker only, so writes of a key never overlap "
            "(as the PBS model assumes).",
        ),
    ] = False,
    timeout: Annotated[float, typer.Option(help="Per-replica timeout (seconds, above 0).")] = 0.5,
    coordinators: Annotated[
        int, typer.Option(help="Coordinators (clients) sharing the cluster.")
    ] = 2,
    history: Annotated[
        Path | None,
        typer.Option(
            "--history",
            help="Write the history: Jepsen EDN if the name ends in .edn, else JSON lines.",
            dir_okay=False,
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Draw the operations timeline, P(consistent read) vs time since the write "
            "and latencies (PNG; needs matplotlib).",
            dir_okay=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Run a read/write workload against a quorum cluster it starts itself, inject
    faults on a schedule, and check the recorded history (stale reads, lost writes,
    monotonic reads, linearizability per key, staleness vs time). Exits 0 when valid,
    80 on anomalies, 81 when unknown, 82 when nothing could be checked."""

    def body() -> int:
        from multistore.cli._lab import run_lab_command

        options = {
            "n": n,
            "r": r,
            "w": w,
            "m": m,
            "ops": ops,
            "concurrency": concurrency,
            "duration": duration,
            "keys": keys,
            "mix": mix,
            "seed": seed,
            "nodes": nodes,
            "faults": faults,
            "latency": latency,
            "routing": routing,
            "single_writer": single_writer,
            "timeout": timeout,
            "coordinators": coordinators,
        }
        return run_lab_command(options, history=history, plot=plot, as_json=as_json)

    code = _guard(body)
    if code:
        raise typer.Exit(code=code)


@lab_app.command("engine")
def lab_engine_command(
    target: Annotated[
        str, typer.Option(help="redis-cluster, patroni (with etcd) or etcd.")
    ] = "redis-cluster",
    fault: Annotated[
        str,
        typer.Option(
            help="none or kill; redis-cluster also pause and lagging-failover (the replica "
            "falls behind, then its primary dies)."
        ),
    ] = "kill",
    duration: Annotated[float, typer.Option(help="Seconds of workload.")] = 6.0,
    keys: Annotated[int, typer.Option(help="Distinct keys (registers).")] = 3,
    workers: Annotated[int, typer.Option(help="Concurrent clients.")] = 4,
    wait_replicas: Annotated[
        int, typer.Option(help="redis-cluster: WAIT for this many replicas after each write.")
    ] = 0,
    synchronous: Annotated[
        bool, typer.Option("--synchronous", help="patroni: Patroni's synchronous mode.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Random seed of the workload.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Start a real distributed engine (Redis Cluster, PostgreSQL under Patroni, etcd)
    as throwaway processes, run a register workload while a fault hits it, heal, read
    every key and check the history (lost writes, stale reads, linearizability). Exits
    0 when valid, 80 on anomalies, 81 when unknown, 82 when nothing could be checked."""

    def body() -> int:
        import asyncio
        import json

        from multistore.lab._engines_lab import (
            EngineLabOptions,
            format_engine_report,
            run_engine_lab,
        )

        options = EngineLabOptions(
            target=target,
            fault=fault,
            duration=duration,
            keys=keys,
            workers=workers,
            wait_replicas=wait_replicas,
            synchronous=synchronous,
            seed=seed,
        )
        report = asyncio.run(run_engine_lab(options))
        if as_json:
            print(json.dumps(report, indent=2, default=str))
        else:
            print(format_engine_report(report))
        return int(report["exit_code"])

    code = _guard(body)
    if code:
        raise typer.Exit(code=code)


quorum_app = typer.Typer(
    help="Quorum cluster membership: add a node (bootstrap) or remove one (decommission).",
    no_args_is_help=True,
)
app.add_typer(quorum_app, name="quorum")
QuorumUrlOption = Annotated[
    str | None,
    typer.Option("--url", help="The cluster's quorum:// URL (default: [replication.quorum] url)."),
]


@quorum_app.command("add-node")
def quorum_add_node(
    name: Annotated[
        str | None, typer.Argument(help="The new node's name (default: the next nodeN).")
    ] = None,
    node: Annotated[
        str | None,
        typer.Option("--node", help="A Redis cluster's new node: redis://HOST:PORT/DB."),
    ] = None,
    url: QuorumUrlOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Stream the new node the ranges it will replicate, then switch the ring; print
    the URL to open the cluster with from now on."""

    def body() -> None:
        from multistore.cli._quorum import run_membership

        report = asyncio.run(
            run_membership(config, url=url, action="add", name=name, node_url=node, quiet=as_json)
        )
        if as_json:
            _print_json(report)

    _guard(body)


@quorum_app.command("remove-node")
def quorum_remove_node(
    name: Annotated[str, typer.Argument(help="The node to decommission.")],
    url: QuorumUrlOption = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Stream the node's ranges to the nodes that take them over, then switch the ring;
    print the URL to open the cluster with from now on."""

    def body() -> None:
        from multistore.cli._quorum import run_membership

        report = asyncio.run(
            run_membership(
                config, url=url, action="remove", name=name, node_url=None, quiet=as_json
            )
        )
        if as_json:
            _print_json(report)

    _guard(body)


def main() -> None:
    """Entry point of the ``multistore`` script."""
    app()
