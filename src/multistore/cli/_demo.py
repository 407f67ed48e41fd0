"""``multistore demo``.

The demo runs an online shop's data work section by section on the configured
stores (embedded by default) and prints a report that reads at 80 columns; ``--json``
gives the same report as data. Each section says what it shows, prints its tables,
and states in one line what it proved; the report ends with those lines. Each later
capability adds a section to :func:`_sections`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from multistore.cli._human import URLText, duration, shown_url, table
from multistore.config import ROLES, Config, load_config
from multistore.errors import MultistoreError


@dataclass
class SectionReport:
    """What one demo section did: tables for people, data for ``--json``, and
    ``proved``, the one line the report ends with."""

    title: str
    tables: list[RenderableType] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    proved: str = ""
    """What the section showed, in one sentence (markup allowed)."""

    def add(self, shown: Table, title: str = "", note: str = "") -> None:
        """A table with a bold title above and a note below, both at the console's
        full width (a table's own title and caption wrap to the table's width)."""
        parts: list[RenderableType] = []
        if title:
            parts.append(Text(title, style="bold"))
        parts.append(shown)
        if note:
            parts.append(Text.from_markup(note))
        self.tables.append(Group(*parts, Text("")))


Section = Callable[[Config], Awaitable[SectionReport]]


async def _open_and_close(config: Config, role: str) -> tuple[MultistoreError | None, str, float]:
    start = time.perf_counter()
    try:
        store = await config.open(role)
    except MultistoreError as exc:
        return exc, f"{type(exc).__name__}: {exc}", time.perf_counter() - start
    try:
        return None, type(store).__name__, time.perf_counter() - start
    finally:
        await store.close()


async def roles_section(config: Config) -> SectionReport:
    """Check the config and open every role's store."""
    report = SectionReport("configuration: every role's store")
    source = str(config.path) if config.path else "no multistore.toml: embedded defaults"
    base = config.path.parent if config.path is not None else Path.cwd()
    shown = table("role", "model", "store", "opened in")
    rows = []
    first_error: tuple[str, MultistoreError] | None = None
    for role, spec in config.roles.items():
        error, detail, seconds = await _open_and_close(config, role)
        ok = error is None
        if error is not None and first_error is None:
            first_error = (role, error)
        rows.append(
            {
                "role": role,
                "model": spec.model,
                "backend": spec.url.scheme,
                "url": spec.url.render(),
                "source": spec.source,
                "ok": ok,
                "detail": detail,
                "holds": ROLES[role][2],
            }
        )
        shown.add_row(
            role,
            spec.model,
            URLText(shown_url(spec.url, base)),
            duration(seconds) if ok else f"[red]failed[/]: {escape(detail)}",
        )
    report.add(
        shown,
        f"roles ({source})",
        "A role is a job in the shop (sessions, orders, the saga log, …); its URL picks "
        "the store. Without a multistore.toml every role gets an embedded store under "
        f"{_under(config.data_dir, base)}/.",
    )
    backends = sorted({spec.url.scheme for spec in config.roles.values()})
    report.proved = (
        f"all {len(rows)} roles open ({', '.join(backends)}), each as the data model its job needs"
    )
    report.data["roles"] = rows
    if first_error is not None:
        role, error = first_error
        url = config.roles[role].url.render()
        raise type(error)(f"role {role} ({url}): {error.message}", outcome=error.outcome)
    return report


def _sections() -> list[Section]:
    sections: list[Section] = [roles_section]
    try:
        from multistore.cli._demo_polyglot import polyglot_section
    except ImportError:  # pragma: no cover - the section arrives with the stores issue
        return sections
    sections.append(polyglot_section)
    from multistore.cli._demo_idempotency import idempotency_section
    from multistore.cli._demo_multimaster import multimaster_section
    from multistore.cli._demo_outbox import outbox_section
    from multistore.cli._demo_quorum import quorum_section
    from multistore.cli._demo_router import router_section
    from multistore.cli._demo_sagas import sagas_section
    from multistore.cli._demo_twopc import twopc_section

    sections += [
        idempotency_section,
        sagas_section,
        twopc_section,
        outbox_section,
        router_section,
        multimaster_section,
        quorum_section,
    ]
    return sections


def _under(path: Path, base: Path) -> str:
    try:
        return f"./{path.relative_to(base)}"
    except ValueError:
        return str(path)


def _summary(reports: list[SectionReport], seconds: float) -> RenderableType:
    """The end of the report: what each section showed, one line each."""
    lines = table("", "section", "what it showed")
    for report in reports:
        name = report.title.split(":")[0]
        lines.add_row("[green]✓[/]", name, report.proved or "ran")
    return Group(
        lines,
        Text.from_markup(
            f"\n[bold green]demo finished[/] in {duration(seconds)}: {len(reports)} sections, "
            "each behaved as described above (the stale reads of the quorum section are "
            "what R+W<=N allows, shown on purpose)."
        ),
    )


async def run_demo(config_path: Path | None, *, quiet: bool) -> dict[str, Any]:
    config = load_config(config_path)
    console = Console()
    started = time.perf_counter()
    sections = _sections()
    reports: list[SectionReport] = []
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=quiet,
    ) as progress:
        task = progress.add_task("demo", total=len(sections))
        for section in sections:
            doc = (section.__doc__ or section.__name__).strip().splitlines()[0]
            progress.update(task, description=doc)
            report = await section(config)
            reports.append(report)
            progress.advance(task)
            if not quiet:
                console.rule(f"[bold]{escape(report.title)}")
                for part in report.tables:
                    console.print(part)
    if not quiet:
        console.rule("[bold]what the demo showed")
        console.print(_summary(reports, time.perf_counter() - started))
    return {
        "config": str(config.path) if config.path else None,
        "data_dir": str(config.data_dir),
        "sections": [
            {"title": r.title, "proved": Text.from_markup(r.proved).plain, **r.data}
            for r in reports
        ],
    }
