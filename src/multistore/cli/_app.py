"""Command definitions. Each command that reports has ``--json``; errors print one
line and exit with the code of :class:`~multistore.errors.ErrorCode`.

Help texts are Markdown (``rich_markup_mode="markdown"``): they reflow to the
terminal's width, `backticks` show as code and square brackets stay as written.
:func:`multistore.cli._main.main` runs the app (help for a bare command, one line
for a usage error, no value shown for a flag).
"""

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
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"multistore {version('multistore')}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            is_eager=True,
            callback=_print_version,
            help="Print the version of multistore and exit.",
        ),
    ] = False,
) -> None:
    pass


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        metavar="FILE",
        help="Path to multistore.toml (default: $MULTISTORE_CONFIG, then ./multistore.toml, "
        "then embedded stores under ./.multistore/).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _error_line(code: ErrorCode, message: str) -> None:
    """``error[slug]: message`` as one line on stderr (line breaks in the message are
    folded, since a driver's message may hold some)."""
    text = " ".join(message.split())
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    err.print(f"[bold red]error[/]{escape(f'[{code.slug}]: {text}')}")


def _fail(exc: MultistoreError) -> typer.Exit:
    _error_line(exc.code, exc.message)
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
        _error_line(
            ErrorCode.UNKNOWN,
            f"{type(exc).__name__}: {exc} (set MULTISTORE_DEBUG=1 for the traceback)",
        )
        raise typer.Exit(code=int(ErrorCode.UNKNOWN)) from None


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@app.command()
def demo(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Run an online shop's data work end to end on the configured stores (embedded by
    default): each pattern in turn, with what it showed."""

    def body() -> None:
        from multistore.cli._demo import run_demo

        report = asyncio.run(run_demo(config, quiet=as_json))
        if as_json:
            _print_json(report)

    _guard(body)


@app.command()
def init(
    server: Annotated[
        list[str] | None,
        typer.Option(
            "--server",
            "-s",
            metavar="URL",
            help="A server to put the roles it serves on (repeatable), e.g. "
            "postgresql://shop@db1/shop or redis://cache:6379/0; the other roles stay "
            "embedded.",
        ),
    ] = None,
    path: Annotated[
        Path | None,
        typer.Option("--path", metavar="FILE", help="Where to write (default: ./multistore.toml)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Write a commented multistore.toml: every role on its embedded default, or on the
    servers given with --server."""

    def body() -> None:
        from multistore.cli._init import run_init

        report = run_init(path, servers=server or [], force=force, quiet=as_json)
        if as_json:
            _print_json(report)

    _guard(body)


@app.command()
def doctor(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Check that what the config needs is here: Python, the config, the drivers, the
    embedded stores' folder and every server, with the fix for each that is not."""

    def body() -> None:
        from multistore.cli._doctor import run_doctor

        report = asyncio.run(run_doctor(config, quiet=as_json))
        if as_json:
            _print_json(report)
        if report["exit_code"]:
            raise typer.Exit(code=report["exit_code"])

    _guard(body)


@app.command()
def status(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Show every role's store: model, backend, URL (password hidden) and whether it opens."""

    def body() -> None:
        from multistore.cli._status import run_status

        report = asyncio.run(run_status(config, quiet=as_json))
        if as_json:
            _print_json(report)
        failed = [r for r in report["roles"] if not r["ok"]]
        down = [name for name, part in report["replication"].items() if not part["ok"]]
        if failed:
            first = failed[0]
            code = ErrorCode(first["code"])
            _error_line(
                code,
                f"{len(failed)} of {len(report['roles'])} roles did not open; "
                f"{first['role']}: {first['detail']}",
            )
            raise typer.Exit(code=int(code))
        if down:
            _error_line(
                ErrorCode.STORE_UNAVAILABLE, f"replication not reachable: {', '.join(down)}"
            )
            raise typer.Exit(code=int(ErrorCode.STORE_UNAVAILABLE))

    _guard(body)


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    admin_password: Annotated[
        str | None,
        typer.Option(
            envvar="MULTISTORE_ADMIN_PASSWORD",
            help="The console admin's password (set at start). Without it, and without an "
            "admin yet, one is made and logged once.",
        ),
    ] = None,
    order_mode: Annotated[
        str, typer.Option(help="How POST /orders places an order by default: saga or 2pc.")
    ] = "saga",
    traces: Annotated[
        bool, typer.Option("--traces", help="Make OpenTelemetry spans and print them to stderr.")
    ] = False,
    no_telemetry: Annotated[
        bool, typer.Option("--no-telemetry", help="No /metrics and no request points.")
    ] = False,
    rate_limit: Annotated[
        int | None, typer.Option(min=1, help="Requests per client per minute (default 600).")
    ] = None,
    idempotency_lease: Annotated[
        float | None,
        typer.Option(help="Seconds before a crashed request's Idempotency-Key may be retried."),
    ] = None,
    saga_lease: Annotated[
        float | None, typer.Option(help="Seconds a dead server's sagas stay its own.")
    ] = None,
    compensation_attempts: Annotated[
        int | None,
        typer.Option(min=1, help="Attempts of a saga compensation before it is stuck."),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="This server's name in the saga log and 2PC ids (default shop-PORT)."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "info",
) -> None:
    """Serve the example online shop over HTTP: the API (OpenAPI at /openapi.json), the
    operations console at /console, Prometheus metrics at /metrics."""

    def body() -> None:
        from multistore.cli._serve import run_serve

        run_serve(
            config,
            host=host,
            port=port,
            traces=traces,
            log_level=log_level,
            settings={
                "admin_password": admin_password,
                "order_mode": order_mode,
                "telemetry": not no_telemetry,
                "rate_limit": rate_limit,
                "idempotency_lease": idempotency_lease,
                "saga_lease": saga_lease,
                "compensation_attempts": compensation_attempts,
                "name": name,
            },
        )

    _guard(body)


@app.command()
def bench(
    name: Annotated[str, typer.Argument(help="Benchmark name: a module in benchmarks/.")],
    as_json: JsonOption = False,
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="Folder holding the benchmarks (default: ./benchmarks)."),
    ] = None,
    sizes: Annotated[
        str | None,
        typer.Option(
            "--sizes",
            help="Data sizes to grow through, e.g. 1000,100000,1000000 (bench scale).",
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Draw the curves to this PNG (bench scale; matplotlib)."),
    ] = None,
    cases: Annotated[
        str | None,
        typer.Option("--cases", help="Only these cases, e.g. kv-get,idem-claim (bench scale)."),
    ] = None,
) -> None:
    """Run benchmarks/NAME: multistore against the library it is compared with, as
    ratios (above 1: multistore is better)."""

    def body() -> None:
        from multistore.cli._bench import parse_sizes, print_rows, run_benchmark

        options = {"sizes": parse_sizes(sizes), "plot": plot, "cases": cases}
        rows = run_benchmark(name, directory, progress=not as_json, options=options)
        if as_json:
            _print_json(rows)
        else:
            print_rows(name, rows)

    _guard(body)


sagas_app = typer.Typer(
    help="The saga log (the `sagas` role): list the sagas, show one, run a worker."
)
app.add_typer(sagas_app, name="sagas")
StateOption = Annotated[
    str | None,
    typer.Option("--state", help="Only sagas in this state (e.g. stuck, running)."),
]


@sagas_app.callback(invoke_without_command=True)
def sagas(
    ctx: typer.Context,
    config: ConfigOption = None,
    as_json: JsonOption = False,
    state: StateOption = None,
    saga_id: Annotated[
        str | None, typer.Option("--id", help="Show one saga with its steps (as `show ID`).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 100,
) -> None:
    """List the sagas in the saga log, newest first (`show ID`: one saga's steps)."""
    ctx.obj = config
    if ctx.invoked_subcommand is not None:
        return

    def body() -> None:
        from multistore.cli._sagas import run_sagas_list, run_sagas_show

        if saga_id is not None:
            report = asyncio.run(run_sagas_show(config, saga_id, quiet=as_json))
        else:
            report = asyncio.run(run_sagas_list(config, state=state, limit=limit, quiet=as_json))
        if as_json:
            _print_json(report)

    _guard(body)


@sagas_app.command("show")
def sagas_show(
    ctx: typer.Context,
    saga_id: Annotated[str, typer.Argument(help="The saga's id.")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one saga: its state, errors, lease and every step."""

    def body() -> None:
        from multistore.cli._sagas import run_sagas_show

        report = asyncio.run(run_sagas_show(config or ctx.obj, saga_id, quiet=as_json))
        if as_json:
            _print_json(report)

    _guard(body)


@sagas_app.command("cancel")
def sagas_cancel(
    ctx: typer.Context,
    saga_id: Annotated[str, typer.Argument(help="The stuck saga's id.")],
    reason: Annotated[
        str, typer.Option("--reason", help="Why, for whoever reads the log later.")
    ] = "",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Give up on a stuck saga's compensation: it ends cancelled (undo by hand)."""

    def body() -> None:
        from multistore.cli._sagas import run_sagas_cancel

        report = asyncio.run(run_sagas_cancel(config or ctx.obj, saga_id, reason, quiet=as_json))
        if as_json:
            _print_json(report)

    _guard(body)


@sagas_app.command("worker")
def sagas_worker(
    ctx: typer.Context,
    definitions: Annotated[
        str,
        typer.Option(
            "--definitions",
            help="MODULE:ATTRIBUTE naming your Saga definitions (a Saga, a list, or a "
            "function returning either); keep old versions in it while their runs last.",
        ),
    ],
    config: ConfigOption = None,
    as_json: JsonOption = False,
    worker_id: Annotated[
        str | None, typer.Option("--worker-id", help="This worker's name (default: random).")
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, help="Sagas run at once.")
    ] = 8,
    lease: Annotated[
        float, typer.Option("--lease", min=0.1, help="Seconds a dead worker's sagas wait.")
    ] = 30.0,
    grace: Annotated[
        float, typer.Option("--grace", min=0, help="Seconds a stop waits for running sagas.")
    ] = 30.0,
) -> None:
    """Run your definitions' enqueued and abandoned sagas until Ctrl-C or SIGTERM."""

    def body() -> None:
        from multistore.cli._sagas import run_sagas_worker

        report = asyncio.run(
            run_sagas_worker(
                config or ctx.obj,
                definitions=definitions,
                worker_id=worker_id,
                concurrency=concurrency,
                lease=lease,
                grace=grace,
                quiet=as_json,
            )
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
            metavar="NAME=URL",
            # The help is rich markup: "\\[" is a bracket.
            help="A 2PC participant as NAME=URL (repeatable; adds to \\[participants]).",
        ),
    ] = None,
    retry_for: Annotated[
        float,
        typer.Option(
            "--retry-for", min=0, metavar="SECONDS", help="Keep retrying down participants (s)."
        ),
    ] = 0.0,
    sagas: Annotated[
        str | None,
        typer.Option(
            "--sagas",
            help="MODULE:ATTRIBUTE naming your Saga definitions; stuck sagas are retried.",
        ),
    ] = None,
    log: Annotated[
        str | None,
        typer.Option(
            "--log",
            help="URL of the decision log to recover with (default: the transactions role).",
        ),
    ] = None,
    node: Annotated[
        str | None,
        typer.Option(
            "--node",
            help="Only this coordinator node (refused while its coordinator is alive).",
        ),
    ] = None,
) -> None:
    """Resolve in-doubt two-phase-commit transactions with the decision log (the
    `transactions` role, or --log), list stuck sagas, and retry them given --sagas.
    Branches of coordinators that are alive, and of other logs, are left alone."""

    def body() -> None:
        from multistore.cli._ops import run_recover, unresolved_line

        report = asyncio.run(
            run_recover(
                config,
                participants=participant or [],
                retry_for=retry_for,
                quiet=as_json,
                sagas=sagas,
                log=log,
                node=node,
            )
        )
        if as_json:
            _print_json(report)
        twopc = report["transactions"]
        if not twopc.get("resolved", True):
            code = ErrorCode.TRANSACTION_INDETERMINATE
            _error_line(code, unresolved_line(twopc))
            raise typer.Exit(code=int(code))

    _guard(body)


lab_app = typer.Typer(
    help="Fault-injection labs: run a workload under faults and check the history.",
    no_args_is_help=True,
)
app.add_typer(lab_app, name="lab")


@lab_app.command("quorum")
def lab_quorum_command(
    n: Annotated[
        int,
        typer.Option(
            "-n", "--replicas", metavar="N", help="Replication factor N: nodes holding each key."
        ),
    ] = 3,
    r: Annotated[
        str,
        typer.Option(
            "-r", "--read", metavar="LEVEL", help="Read level R: one, quorum, all or a number."
        ),
    ] = "quorum",
    w: Annotated[
        str,
        typer.Option(
            "-w", "--write", metavar="LEVEL", help="Write level W: one, quorum, all or a number."
        ),
    ] = "quorum",
    m: Annotated[
        int,
        typer.Option("-m", "--members", metavar="M", help="Nodes in the cluster (N <= M)."),
    ] = 3,
    old_n: Annotated[int | None, typer.Option("--n", hidden=True)] = None,
    old_r: Annotated[str | None, typer.Option("--r", hidden=True)] = None,
    old_w: Annotated[str | None, typer.Option("--w", hidden=True)] = None,
    old_m: Annotated[int | None, typer.Option("--m", hidden=True)] = None,
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

        options = {  # --n, --r, --w and --m: the spelling of earlier versions
            "n": n if old_n is None else old_n,
            "r": r if old_r is None else old_r,
            "w": w if old_w is None else old_w,
            "m": m if old_m is None else old_m,
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
            help="none or kill; redis-cluster also pause, lagging-failover (the replica "
            "falls behind, then its primary dies) and partition (the primary's cluster bus "
            "cut, clients still reach it)."
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
    typer.Option(
        "--url", help="The cluster's quorum:// URL (default: \\[replication.quorum] url)."
    ),
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
