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
    err.print(f"[bold red]error[/][{exc.code.slug}]: {exc.message}", markup=True)
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
            f"[bold red]error[/][unknown]: {type(exc).__name__}: {exc} "
            "(set MULTISTORE_DEBUG=1 for the traceback)"
        )
        raise typer.Exit(code=int(ErrorCode.UNKNOWN)) from None


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@app.command()
def demo(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Run the seed's e-commerce system end to end on the configured stores
    (embedded by default) and print what each part did."""
    from multistore.cli._demo import run_demo

    def body() -> None:
        report = asyncio.run(run_demo(config, quiet=as_json))
        if as_json:
            _print_json(report)

    _guard(body)


@app.command()
def status(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Show every role's store: model, backend, URL (password hidden) and whether it opens."""
    from multistore.cli._demo import run_status

    def body() -> None:
        report = asyncio.run(run_status(config, quiet=as_json))
        if as_json:
            _print_json(report)
        if any(not r["ok"] for r in report["roles"]):
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
    from multistore.cli._bench import print_rows, run_benchmark

    def body() -> None:
        rows = run_benchmark(name, directory, progress=not as_json)
        if as_json:
            _print_json(rows)
        else:
            print_rows(name, rows)

    _guard(body)


def main() -> None:
    """Entry point of the ``multistore`` script."""
    app()
