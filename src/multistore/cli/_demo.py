"""``multistore demo`` and ``multistore status``.

The demo runs the seed's system section by section on the configured stores
(embedded by default) and prints a readable report; ``--json`` gives the same
report as data. Each later capability adds a section to :data:`SECTIONS`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from multistore.cli._text import console, joined, styled
from multistore.config import ROLES, Config, load_config
from multistore.errors import MultistoreError


@dataclass
class SectionReport:
    """What one demo section did: tables for people, data for ``--json``."""

    title: str
    tables: list[Table] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


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
    table = Table(title=f"roles ({source}; data dir {config.data_dir})")
    for column in ("role", "model", "backend", "url", "opened", "ms"):
        table.add_column(column, overflow="fold")
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
        table.add_row(
            role,
            spec.model,
            spec.url.scheme,
            spec.url.render().replace(str(config.data_dir), "<data dir>"),
            styled("yes", "green") if ok else joined(styled("no", "red"), f": {detail}"),
            f"{seconds * 1000:.1f}",
        )
    report.tables.append(table)
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


async def run_demo(config_path: Path | None, *, quiet: bool) -> dict[str, Any]:
    config = load_config(config_path)
    out = console()
    sections = _sections()
    reports: list[SectionReport] = []
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console(stderr=True),
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
                out.rule(styled(report.title, "bold"))
                for table in report.tables:
                    out.print(table)
    if not quiet:
        out.print(
            joined(styled("demo finished", "bold green"), f": {len(reports)} sections, all passed")
        )
    return {
        "config": str(config.path) if config.path else None,
        "data_dir": str(config.data_dir),
        "sections": [{"title": r.title, **r.data} for r in reports],
    }


async def run_status(config_path: Path | None, *, quiet: bool) -> dict[str, Any]:
    config = load_config(config_path)
    rows = []
    table = Table(title="multistore status")
    for column in ("role", "model", "backend", "url", "ok", "detail"):
        # Fold long words instead of cutting them: a URL or a hint must stay whole.
        table.add_column(column, overflow="fold" if column in ("url", "detail") else "ellipsis")
    for role, spec in config.roles.items():
        error, detail, _ = await _open_and_close(config, role)
        ok = error is None
        rows.append(
            {
                "role": role,
                "model": spec.model,
                "backend": spec.url.scheme,
                "url": spec.url.render(),
                "source": spec.source,
                "ok": ok,
                "detail": detail,
                "code": None if error is None else int(error.code),
            }
        )
        table.add_row(
            role,
            spec.model,
            spec.url.scheme,
            spec.url.render(),
            styled("yes", "green") if ok else styled("no", "red"),
            detail,
        )
    replication: dict[str, Any] = {}
    extra: list[Table] = []
    if config.replication is not None:
        from multistore.cli._status import replication_report

        replication, extra = await replication_report(config)
    from multistore.service._ops import operations_report

    try:
        shop = {"ok": True, **await operations_report(config)}
    except MultistoreError as exc:
        shop = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    extra.append(_shop_table(shop))
    if not quiet:
        out = console()
        out.print(table)
        for part in extra:
            out.print(part)
    return {
        "config": str(config.path) if config.path else None,
        "roles": rows,
        "replication": replication,
        "shop": shop,
    }


def _shop_table(shop: dict[str, Any]) -> Table:
    """The numbers the console and /metrics of ``multistore serve`` show."""
    table = Table(title="the shop (what multistore serve's console and /metrics show)")
    table.add_column("what")
    table.add_column("now", overflow="fold")
    if not shop["ok"]:
        table.add_row("error", shop["error"])
        return table
    table.add_row("sagas", ", ".join(f"{k} {v}" for k, v in shop["sagas"].items()))
    table.add_row("in-doubt 2PC branches", str(shop["in_doubt"]))
    table.add_row("outbox", ", ".join(f"{k} {v}" for k, v in shop["outbox"].items()))
    table.add_row("outbox lag", f"{shop['outbox_lag_seconds']:.1f} s")
    behind = "; ".join(
        f"{node} behind {peer} by {n}"
        for node, peers in shop["replication_behind"].items()
        for peer, n in peers.items()
    )
    table.add_row("cart replication", behind or "-")
    return table
