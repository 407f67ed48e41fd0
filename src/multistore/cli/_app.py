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

from multistore.cli._text import console, joined, styled
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


def _error_line(code: ErrorCode, message: str) -> None:
    """``error[slug]: message`` as one line on stderr (line breaks in the message are
    folded, since a driver's message may hold some)."""
    text = " ".join(message.split())
    line = joined(styled("error", "bold red"), f"[{code.slug}]: {text}")
    console(stderr=True, soft_wrap=True).print(line, highlight=False)


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
            # The help is rich markup: "\\[" is a bracket.
            help="A 2PC participant as NAME=URL (repeatable; adds to \\[participants]).",
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
        twopc = report["transactions"]
        if not twopc.get("resolved", True):
            left = [
                f"unreachable participants: {', '.join(twopc['unreachable'])}"
                if twopc.get("unreachable")
                else "",
                f"in-doubt transactions: {', '.join(map(str, twopc['pending']))}"
                if twopc.get("pending")
                else "",
            ]
            _error_line(
                ErrorCode.TRANSACTION_INDETERMINATE,
                "not every transaction was resolved; "
                + ("; ".join(part for part in left if part) or "see the report"),
            )
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
        str, typer.Option(help="Fault schedule: none, kill, partition, latency, skew or chaos.")
    ] = "none",
    timeout: Annotated[float, typer.Option(help="Per-replica timeout (seconds).")] = 0.5,
    coordinators: Annotated[
        int, typer.Option(help="Coordinators (clients) sharing the cluster.")
    ] = 2,
    history: Annotated[
        Path | None,
        typer.Option("--history", help="Write the history as JSON lines.", dir_okay=False),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Draw P(stale read) vs time since the write and latencies (PNG).",
            dir_okay=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Run a read/write workload against a quorum cluster it starts itself, inject
    faults on a schedule, and check the recorded history (stale reads, lost writes,
    monotonic reads, linearizability per key, staleness vs time)."""

    def body() -> None:
        from multistore.lab._quorum_lab import format_lab_report, lab_quorum

        report = lab_quorum(
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
            history=history,
            plot=plot,
        )
        if as_json:
            _print_json(report)
        else:
            print(format_lab_report(report))

    _guard(body)


def main() -> None:
    """Entry point of the ``multistore`` script."""
    app()
