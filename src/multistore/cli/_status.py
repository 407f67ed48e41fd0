"""The replication part of ``multistore status``: the topologies named in
``[replication]`` are opened, asked for their state, and closed again."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from multistore.config import Config
from multistore.core import LWW, KeepSiblings, MergeFunction, Resolver, merge_carts
from multistore.errors import MultistoreError
from multistore.replication import (
    MultiMasterNode,
    QuorumWideColumnStore,
    Router,
    multimaster_status,
    quorum_status,
    replication_status,
)


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


async def replication_report(config: Config) -> tuple[dict[str, Any], list[Table]]:
    """Status of each configured topology; a topology that cannot be opened is
    reported with its error instead of failing the whole command."""
    spec = config.replication
    report: dict[str, Any] = {}
    tables: list[Table] = []
    if spec is None:
        return report, tables
    parts = []
    if spec.router_primary is not None:
        parts.append(("router", _router))
    if spec.multimaster_nodes:
        parts.append(("multimaster", _multimaster))
    if spec.quorum is not None:
        parts.append(("quorum", _quorum))
    for name, probe in parts:
        try:
            report[name] = {"ok": True, **await probe(config)}
        except MultistoreError as exc:
            report[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        table = Table(title=f"replication: {name}")
        table.add_column("key")
        table.add_column("value", overflow="fold")
        for key, value in report[name].items():
            table.add_row(str(key), str(value))
        tables.append(table)
    return report, tables
