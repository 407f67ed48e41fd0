"""``multistore quorum add-node`` / ``remove-node``: membership changes of a quorum
cluster, from its ``quorum://`` URL (``--url``, or ``[replication.quorum] url`` in the
config). Each prints what moved and the URL to open the cluster with from now on."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from multistore.cli._human import quantity, table
from multistore.config import load_config
from multistore.errors import InvalidURLError, UsageError
from multistore.replication import QuorumNode, RedisNode, SQLiteNode
from multistore.replication._qurl import cluster_members, membership_url, open_cluster
from multistore.urls import StoreURL, parse_url


def _quorum_url(config_path: Path | None, url: str | None) -> StoreURL:
    if url is not None:
        parsed = parse_url(url)
        if parsed.scheme != "quorum":
            raise UsageError(f"--url must be a quorum:// URL, got {parsed.scheme}://")
        return parsed
    spec = load_config(config_path).replication
    if spec is None or spec.quorum is None:
        raise UsageError("give --url quorum://… or set [replication.quorum] url in the config")
    return spec.quorum


def _check_node_files(url: StoreURL, members: list[tuple[str, str]]) -> None:
    """An embedded cluster's node files must all be there: a mistyped folder (or node
    count) must not become a new cluster of empty nodes that a node then joins."""
    if url.host is not None:
        return
    missing = [name for name, place in members if not Path(place).is_file()]
    if missing:
        raise UsageError(
            f"no node file for {', '.join(missing)} in {url.database}: is the URL's "
            "folder (or its nodes=/names=) that of the cluster?"
        )


def _new_node(
    url: StoreURL, members: list[tuple[str, str]], name: str | None, node_url: str | None
) -> tuple[str, str]:
    """(the new node's name; where it is, as in the URL), checked before anything
    changes: the URL printed afterwards must name it again, and it must be no node the
    cluster has already (a join streams it ranges and has the nodes that lost them
    forget them: twice the same storage would forget what it was just sent)."""
    taken = {member for member, _ in members}
    if name is None:
        name = next(f"node{i}" for i in range(len(taken) + 1) if f"node{i}" not in taken)
    if not name or any(c in name for c in ",/\\"):
        raise UsageError(
            f"node name {name!r} cannot be used: it must be non-empty and hold no ',' "
            "(the URL's names= separator), '/' or '\\'"
        )
    if name in taken:
        raise UsageError(f"the cluster has a node {name!r} already")
    if url.host is None:
        if node_url is not None:
            raise UsageError("embedded nodes are files in the cluster's folder: drop --node")
        return name, str(Path(str(url.database)) / f"{name}.db")
    if node_url is None:
        raise UsageError("a Redis cluster needs --node redis://HOST:PORT/DB for the new node")
    try:
        node = parse_url(node_url)
    except InvalidURLError as exc:
        raise UsageError(f"--node must be a redis://HOST:PORT/DB URL: {exc}") from None
    if node.scheme != "redis" or not node.host:
        raise UsageError(f"--node must be a redis://HOST:PORT/DB URL, got {node_url!r}")
    place = f"{node.host}:{node.port or 6379}/{node.database or '0'}"
    for member, where in members:
        if where == place:
            raise UsageError(f"--node {node_url} is node {member!r} of the cluster already")
    return name, place


def _open_node(url: StoreURL, name: str, place: str, node_url: str | None) -> QuorumNode:
    """A handle on the new node (unopened for SQLite)."""
    if url.host is None or node_url is None:
        return SQLiteNode(name, place)
    timeout = max(1.0, float(url.options.get("timeout", 2.0)))
    prefix = str(url.options.get("prefix", "q:"))
    return RedisNode.from_url(name, node_url, timeout=timeout, prefix=prefix)


async def run_membership(
    config_path: Path | None,
    *,
    url: str | None,
    action: str,
    name: str | None,
    node_url: str | None,
    quiet: bool,
) -> dict[str, Any]:
    """Add a node to the cluster (``action="add"``) or remove one (``"remove"``)."""
    quorum_url = _quorum_url(config_path, url)
    members = cluster_members(quorum_url)
    _check_node_files(quorum_url, members)
    if action == "remove":
        if name is None or name not in {member for member, _ in members}:
            known = ", ".join(member for member, _ in members)
            raise UsageError(f"name the node to remove: one of {known}")
        if node_url is not None:
            raise UsageError("remove-node takes no --node")
    else:
        name, place = _new_node(quorum_url, members, name, node_url)
    cluster = await open_cluster(quorum_url)
    try:
        if action == "add":
            node = _open_node(quorum_url, name, place, node_url)
            if isinstance(node, SQLiteNode):
                node = await node.open()
            before = cluster.ring
            change = await cluster.add_node(node, cleanup=False)
            members = [*members, (name, place)]
            # The ring has switched: say so before the nodes that lost ranges forget
            # them (from then on only the new ring holds every key on W replicas), so
            # an interrupted command has told where the cluster is.
            joined = membership_url(quorum_url, members).render()
            Console(stderr=True, highlight=False, soft_wrap=True).print(
                f"quorum: {change.node} joined; open the cluster with: {escape(joined)}"
            )
            removed = await cluster.cleanup(before)
            change = dataclasses.replace(change, records_removed=removed)
        else:
            assert name is not None
            change = await cluster.remove_node(name)
            members = [(member, place) for member, place in members if member != name]
    finally:
        await cluster.close()
    report = dataclasses.asdict(change)
    report["url"] = membership_url(quorum_url, members).render()
    if not quiet:
        console = Console(highlight=False)
        console.print(f"[bold]quorum: {change.node} {'joined' if action == 'add' else 'left'}[/]")
        shown = table("", "", show_header=False)
        for key, value in report.items():
            if key == "url":
                continue
            if isinstance(value, list | tuple):
                text = ", ".join(map(str, value))
            elif key == "bytes_streamed":
                text = quantity(value, "bytes")
            else:
                text = str(value)
            shown.add_row(key.replace("_", " "), escape(text))
        console.print(shown)
        console.print(f"open the cluster with: {escape(report['url'])}")
    return report
