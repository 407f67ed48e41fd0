"""The body of ``multistore lab quorum``: header, progress, report and exit code.

On a terminal the run shows its setup at once and a progress line while it runs
(on standard error, gone when it ends); the report follows on standard output. The
exit code is the verdict's (0 valid, 80 anomalies, 81 unknown, 82 nothing checked;
see docs/lab.md), so the command can gate a CI job. ``--plot`` without matplotlib is
noticed before the run: the run goes on, its results are printed, and then the
missing plot is reported with the command that installs matplotlib (exit 23 if the
verdict itself is valid).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from multistore.errors import ErrorCode, UnsupportedError
from multistore.lab._plot import require_matplotlib
from multistore.lab._quorum_lab import QuorumLabOptions, run_quorum_lab
from multistore.lab._report import LabProgress, fold, format_header, format_lab_report

__all__ = ["run_lab_command"]


@contextlib.contextmanager
def _progress(console: Console) -> Iterator[Callable[[LabProgress], None] | None]:
    """A progress display on a terminal (``None`` elsewhere)."""
    if not console.is_terminal:
        yield None
        return
    bar = Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("ok {task.fields[ok]}  fail {task.fields[fail]}  info {task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[faults]}"),
        console=console,
        transient=True,
    )
    task = bar.add_task("starting", total=None, ok=0, fail=0, info=0, faults="")

    def show(p: LabProgress) -> None:
        faults = escape("faults: " + ", ".join(p.faults)) if p.faults else ""
        bar.update(
            task,
            description=p.phase,
            total=p.total,
            completed=p.done,
            ok=p.ok,
            fail=p.fail,
            info=p.info,
            faults=faults,
        )

    with bar:
        yield show


def run_lab_command(
    options: dict[str, Any],
    *,
    history: Path | None,
    plot: Path | None,
    as_json: bool,
) -> int:
    """Run the lab as the CLI does; returns the exit code."""
    lab_options = QuorumLabOptions(**options)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    plot_error: str | None = None
    if plot is not None:
        try:
            require_matplotlib()
        except UnsupportedError as exc:
            plot_error = exc.message
            plot = None
            err.print(
                "[bold yellow]warning[/]: "
                + escape(f"{plot_error}. The run goes on; its results are printed without it.")
            )
    if not as_json:
        quorum = lab_options.config()
        fields = lab_options.__dataclass_fields__
        config = {name: getattr(lab_options, name) for name in fields}
        config.update(r=quorum.read_count, w=quorum.write_count, overlapping=quorum.overlapping)
        print(fold(format_header(config), _columns()), flush=True)
    with _progress(err) as show:
        report = asyncio.run(run_quorum_lab(lab_options, history=history, plot=plot, progress=show))
    if plot_error is not None:
        report["plot_error"] = plot_error
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
    else:
        print(format_lab_report(report, header=False, width=_columns()))
    code = int(report["exit_code"])
    if report.get("plot_error"):
        err.print("[bold red]error[/]" + escape(f"[unsupported]: {report['plot_error']}"))
        return code or int(ErrorCode.UNSUPPORTED)
    return code


def _columns() -> int | None:
    """The terminal's width; None when the output is no terminal (lines kept whole)."""
    if not sys.stdout.isatty():
        return None
    return shutil.get_terminal_size((80, 24)).columns
