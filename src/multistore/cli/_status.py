"""``multistore status``: every role's store, and the topologies of ``[replication]``.

Status only looks. An embedded store whose file does not exist yet is reported as
"not created yet" (it is created on first use) and is not opened, so the command
creates nothing: no ``.multistore/`` folder, no database files. A store that exists,
or a server, is opened and closed again to see that it answers. URLs are shown as
one writes them in ``multistore.toml``: paths relative to the config file's folder
(or the working directory without a file), passwords hidden.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from multistore.cli._human import URLText, duration, shown_url
from multistore.cli._human import table as table_
from multistore.config import Config, load_config
from multistore.core import LWW, KeepSiblings, MergeFunction, Resolver, merge_carts
from multistore.errors import ConfigError, MultistoreError, StoreUnavailableError
from multistore.replication import (
    MultiMasterNode,
    QuorumWideColumnStore,
    Router,
    multimaster_status,
    quorum_status,
    replication_status,
)
from multistore.urls import StoreURL, parse_url

__all__ = ["absent_file", "replication_report", "run_status"]


def absent_file(url: StoreURL) -> bool:
    """True when ``url`` names an embedded store whose file or folder does not exist."""
    return url.is_file and url.path != ":memory:" and not os.path.exists(url.path)


def _state_of(error: MultistoreError) -> str:
    if isinstance(error, StoreUnavailableError):
        return "unreachable"
    if isinstance(error, ConfigError) and "not installed" in error.message:
        return "driver missing"
    return "failed"


async def _check_role(config: Config, role: str) -> dict[str, Any]:
    spec = config.role(role)
    row: dict[str, Any] = {
        "role": role,
        "model": spec.model,
        "backend": spec.url.scheme,
        "url": spec.url.render(),
        "source": spec.source,
    }
    if absent_file(spec.url):
        try:  # it may be created on first use only if its folder can be
            config.check_folder(role)
        except ConfigError as exc:
            return {
                **row,
                "ok": False,
                "state": _state_of(exc),
                "detail": f"{type(exc).__name__}: {exc}",
                "code": int(exc.code),
                "seconds": None,
            }
        return {
            **row,
            "ok": True,
            "state": "not created yet",
            "detail": "not created yet; created on first use",
            "code": None,
            "seconds": None,
        }
    start = time.perf_counter()
    try:
        store = await config.open(role)
    except MultistoreError as exc:
        return {
            **row,
            "ok": False,
            "state": _state_of(exc),
            "detail": f"{type(exc).__name__}: {exc}",
            "code": int(exc.code),
            "seconds": time.perf_counter() - start,
        }
    try:
        seconds = time.perf_counter() - start
        return {
            **row,
            "ok": True,
            "state": "ok",
            "detail": type(store).__name__,
            "code": None,
            "seconds": seconds,
        }
    finally:
        await store.close()


def _roles_table(config: Config, rows: list[dict[str, Any]]) -> RenderableType:
    base = config.path.parent if config.path is not None else Path.cwd()
    if config.path is not None:
        title = f"multistore status: {config.path}"
    else:
        title = "multistore status: no multistore.toml, embedded defaults"
    table = table_("role", "model", "store", "state")
    notes: list[str] = []
    for row in rows:
        spec = config.role(row["role"])
        if row["state"] == "ok":
            state = f"[green]ok[/] ({duration(row['seconds'])})"
        elif row["ok"]:
            state = "[dim]not created yet[/]"
        else:
            state = f"[red]{row['state']}[/]"
            notes.append(f"{row['role']}: {row['detail']}")
        table.add_row(row["role"], row["model"], URLText(shown_url(spec.url, base)), state)
    parts: list[RenderableType] = [Text(title, style="bold"), table]
    if any(r["state"] == "not created yet" for r in rows):
        parts.append(
            Text(
                "\nEmbedded stores are created on first use (multistore demo, or your "
                "application); status creates nothing."
            )
        )
    if notes:
        parts.append(Text(""))
    for note in notes:
        parts.append(Text.from_markup(f"[red]•[/] {escape(note)}"))
    return Group(*parts)


async def run_status(config_path: Path | None, *, quiet: bool) -> dict[str, Any]:
    """Check every role's store and the ``[replication]`` topologies; print them
    unless ``quiet``; return the report (``--json``)."""
    config = load_config(config_path)
    rows = [await _check_role(config, role) for role in config.roles]
    replication: dict[str, Any] = {}
    extra: list[RenderableType] = []
    if config.replication is not None:
        replication, extra = await replication_report(config)
    shop = await _shop_report(config)
    extra.append(_shop_view(shop))
    if not quiet:
        console = Console()
        console.print(_roles_table(config, rows))
        for part in extra:
            console.print(part)
    return {
        "config": str(config.path) if config.path else None,
        "data_dir": str(config.data_dir),
        "roles": rows,
        "replication": replication,
        "shop": shop,
    }


# -- the shop ------------------------------------------------------------------------------


def _shop_files(config: Config) -> list[StoreURL]:
    """The stores the shop's numbers come from (see ``operations_report``)."""
    from multistore.service._shop import cart_node_urls, database_urls

    urls = [config.role("sagas").url, config.role("transactions").url]
    urls += list(database_urls(config).values())
    urls += [parse_url(u) for u in cart_node_urls(config).values()]
    return urls


async def _shop_report(config: Config) -> dict[str, Any]:
    """The numbers of ``multistore serve``'s console, read without a server; "not
    created yet" (and nothing opened) while the shop's embedded stores do not exist."""
    from multistore.service._ops import operations_report

    missing = [u.path for u in _shop_files(config) if absent_file(u)]
    if missing:
        return {"ok": True, "state": "not created yet", "missing": missing}
    try:
        return {"ok": True, "state": "ok", **await operations_report(config)}
    except MultistoreError as exc:
        return {"ok": False, "state": "failed", "error": f"{type(exc).__name__}: {exc}"}


def _shop_view(shop: dict[str, Any]) -> RenderableType:
    """The numbers the console and /metrics of ``multistore serve`` show."""
    title = "the shop (what multistore serve's console and /metrics show)"
    if shop["state"] == "not created yet":
        return Text(f"\n{title}: not created yet (multistore serve makes it)")
    if not shop["ok"]:
        return Text.from_markup(f"\n{escape(title)}: [red]failed[/]: {escape(shop['error'])}")
    table = table_("what", "now")
    table.add_row("sagas", ", ".join(f"{k} {v}" for k, v in shop["sagas"].items()) or "-")
    table.add_row("in-doubt 2PC branches", str(shop["in_doubt"]))
    table.add_row("outbox", ", ".join(f"{k} {v}" for k, v in shop["outbox"].items()))
    table.add_row("outbox lag", duration(shop["outbox_lag_seconds"]))
    behind = "; ".join(
        f"{node} behind {peer} by {n}"
        for node, peers in shop["replication_behind"].items()
        for peer, n in peers.items()
    )
    table.add_row("cart replication", behind or "-")
    return _titled(title, table)


# -- [replication] ------------------------------------------------------------------------


def _resolver(name: str) -> Resolver:
    if name == "merge_carts":
        return MergeFunction(merge_carts)
    if name == "siblings":
        return KeepSiblings()
    return LWW()


async def _router(config: Config) -> dict[str, Any]:
    spec = config.replication
    assert spec is not None and spec.router_primary is not None
    router = await Router.open(
        spec.router_primary.render(hide_password=False),
        [u.render(hide_password=False) for u in spec.router_replicas],
    )
    try:
        return await replication_status(router)
    finally:
        await router.close()


async def _multimaster(config: Config) -> dict[str, Any]:
    spec = config.replication
    assert spec is not None
    nodes: list[MultiMasterNode] = []
    try:
        for node_id, url in spec.multimaster_nodes.items():
            nodes.append(
                await MultiMasterNode.open(
                    url.render(hide_password=False),
                    node_id,
                    resolver=_resolver(spec.multimaster_strategy),
                )
            )
        return await multimaster_status(nodes)
    finally:
        for node in nodes:
            await node.close()


async def _quorum(config: Config) -> dict[str, Any]:
    spec = config.replication
    assert spec is not None and spec.quorum is not None
    store = await QuorumWideColumnStore.open(spec.quorum)
    try:
        return await quorum_status(store.cluster)
    finally:
        await store.close()


def _absent(config: Config, name: str) -> list[str]:
    """The embedded files of topology ``name`` that do not exist yet."""
    spec = config.replication
    assert spec is not None
    if name == "router":
        urls = [u for u in (spec.router_primary, *spec.router_replicas) if u is not None]
    elif name == "multimaster":
        urls = list(spec.multimaster_nodes.values())
    else:
        urls = [spec.quorum] if spec.quorum is not None else []
    return [u.path for u in urls if absent_file(u)]


def _titled(title: str, table: Table, *notes: str) -> RenderableType:
    """A blank line, the title in bold, the table, then its notes: titles and notes
    take the console's width, not the table's."""
    return Group(
        Text(""),
        Text(title, style="bold"),
        table,
        *(Text(note, style="dim") for note in notes),
    )


def _router_view(report: dict[str, Any], base: Path) -> RenderableType:
    title = (
        f"replication: router (primary {report['primary']}, timeline {report['timeline']}"
        + (", failing over" if report["failing_over"] else "")
        + ")"
    )
    table = table_("node", "role", "health", "behind", ">reads", ">writes", "url")
    for node in report["nodes"]:
        behind = "-"
        if node["role"] == "replica":
            lag = node["lag_seconds"]
            shown = "unknown" if lag is None else f"≤ {duration(lag)}"
            behind = f"{shown}, {node['lag_positions']} changes"
        health = node["health"]
        colour = "green" if health == "ok" else "yellow" if health == "lagging" else "red"
        table.add_row(
            node["name"],
            node["role"],
            f"[{colour}]{escape(health)}[/]",
            behind,
            str(node["reads"]),
            str(node["writes"]),
            URLText(shown_url(parse_url(node["url"]), base)),
        )
    errors = [f"{n['name']}: {n['error']}" for n in report["nodes"] if n.get("error")]
    if report.get("timeline_pending"):
        errors.append(f"timeline not known yet: {report['timeline_pending']}")
    return _titled(title, table, *errors)


def _multimaster_view(report: dict[str, Any], strategy: str) -> RenderableType:
    table = table_("node", ">own changes", ">log rows", ">conflicts", ">held back", "peers lack")
    for node_id, node in report["nodes"].items():
        lack = ", ".join(f"{peer} {p['missing']}" for peer, p in node["peers"].items()) or "-"
        table.add_row(
            node_id,
            str(node["own_changes"]),
            str(node["log_rows"]),
            str(node["conflicts"]),
            str(node["rejected_by_skew_guard"]),
            lack,
        )
    return _titled(
        f"replication: multi-master ({strategy})",
        table,
        "peers lack: changes of this node that the peer has not acknowledged yet; "
        "held back: changes refused by the clock-skew guard",
    )


def _quorum_view(report: dict[str, Any]) -> RenderableType:
    overlap = "R+W>N: reads see the latest write" if report["overlapping"] else "R+W<=N"
    kind = "sloppy" if report["sloppy"] else "strict"
    title = (
        f"replication: quorum (N={report['n']} R={report['r']} W={report['w']}, "
        f"{overlap}; {kind} quorum; reads from {report['read_from']})"
    )
    table = table_("node", "state", ">failures", ">latency")
    for node in report["nodes"]:
        latency = node["latency_ms"]
        table.add_row(
            node["name"],
            node["state"],
            str(node["failures"]),
            "-" if latency is None else duration(latency / 1000),
        )
    hints = report["hints"]
    return _titled(
        title,
        table,
        f"hints: {hints['pending']} pending, {hints['delivered']} delivered, "
        f"{hints['dropped']} dropped; since open: {report['reads']} reads, "
        f"{report['writes']} writes, {report['read_repairs']} read repairs",
    )


async def replication_report(config: Config) -> tuple[dict[str, Any], list[RenderableType]]:
    """Status of each configured topology; a topology that cannot be opened is
    reported with its error instead of failing the whole command, and one whose
    embedded files do not exist yet is reported as such without creating them."""
    spec = config.replication
    report: dict[str, Any] = {}
    views: list[RenderableType] = []
    if spec is None:
        return report, views
    base = config.path.parent if config.path is not None else Path.cwd()
    parts = []
    if spec.router_primary is not None:
        parts.append(("router", _router))
    if spec.multimaster_nodes:
        parts.append(("multimaster", _multimaster))
    if spec.quorum is not None:
        parts.append(("quorum", _quorum))
    for name, probe in parts:
        missing = _absent(config, name)
        if missing:
            report[name] = {"ok": True, "state": "not created yet", "missing": missing}
            shown = ", ".join(str(_under(Path(m), base)) for m in missing)
            views.append(Text(f"\nreplication: {name}: not created yet ({shown})"))
            continue
        try:
            report[name] = {"ok": True, **await probe(config)}
        except MultistoreError as exc:
            report[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            views.append(
                Text.from_markup(f"\nreplication: {name}: [red]failed[/]: {escape(str(exc))}")
            )
            continue
        if name == "router":
            views.append(_router_view(report[name], base))
        elif name == "multimaster":
            views.append(_multimaster_view(report[name], spec.multimaster_strategy))
        else:
            views.append(_quorum_view(report[name]))
    return report, views


def _under(path: Path, base: Path) -> Path:
    try:
        return path.relative_to(base)
    except ValueError:
        return path
