"""``multistore init``: write a commented ``multistore.toml``.

Without servers the file keeps every role on its embedded default and lists each
role, commented out, with its default URL and what it holds, so that moving one role
to a server is uncommenting a line. Each ``--server URL`` takes the roles its scheme
serves (a Redis server the key-value roles, PostgreSQL the document, search and
relational ones, …); the other roles stay embedded. The file is checked by loading
it before it is written, and an existing file is never replaced without ``--force``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from multistore.config import DEFAULT_DATA_DIR, DEFAULT_FILE, ROLES, load_config
from multistore.errors import ConfigError, MultistoreError, UsageError
from multistore.stores import BACKENDS, EXTRAS
from multistore.urls import SERVER_SCHEMES, StoreURL, parse_url

__all__ = ["render_config", "run_init"]

_SERVER_ROLES_FIRST = ("postgresql", "mariadb", "redis", "falkordb", "influxdb", "quorum")
"""When two servers serve a model, the earlier here takes its roles, except that
MariaDB takes ``orders`` when PostgreSQL is given too (the shop's orders on one server,
its logs on the other)."""

_EXAMPLES = {
    "kv": "redis://127.0.0.1:6379/0",
    "document": "postgresql://shop@127.0.0.1:5432/shop",
    "search": "postgresql://shop@127.0.0.1:5432/shop",
    "relational": "postgresql://shop@127.0.0.1:5432/shop",
    "graph": "falkordb://127.0.0.1:6379/social",
    "timeseries": "influxdb://127.0.0.1:8086/metrics",
    "widecolumn": "quorum://10.0.0.1:6379/0?n=3&peers=10.0.0.2:6379,10.0.0.3:6379",
}


def _servers(urls: Sequence[str]) -> dict[str, StoreURL]:
    """scheme -> parsed URL; one server per scheme, each a server URL."""
    chosen: dict[str, StoreURL] = {}
    for text in urls:
        try:
            url = parse_url(text)
        except MultistoreError as exc:
            raise UsageError(f"--server {text!r}: {exc}") from None
        if url.scheme not in SERVER_SCHEMES and not (url.scheme == "quorum" and url.host):
            raise UsageError(
                f"--server {url.render()!r} names a file, not a server; embedded stores "
                "are the default, leave them out"
            )
        if url.scheme in chosen:
            raise UsageError(f"--server: two {url.scheme}:// servers; give one of each kind")
        chosen[url.scheme] = url
    return chosen


def _assign(servers: dict[str, StoreURL]) -> dict[str, StoreURL]:
    """role -> the server URL that serves it (roles no server serves are left out)."""
    assigned: dict[str, StoreURL] = {}
    for role, (model, _, _) in ROLES.items():
        for scheme in _SERVER_ROLES_FIRST:
            if scheme in servers and (model, scheme) in BACKENDS:
                assigned[role] = servers[scheme]
                break
    if "mariadb" in servers and "postgresql" in servers:
        assigned["orders"] = servers["mariadb"]
    return assigned


def render_config(servers: Sequence[str] = ()) -> tuple[str, dict[str, str]]:
    """The text of a commented ``multistore.toml`` and the roles it puts on servers."""
    assigned = _assign(_servers(servers))
    width = max(len(role) for role in ROLES)
    lines = [
        "# multistore.toml: which store serves each role of your application.",
        "# A role's URL picks its backend; a role left out (or commented out) keeps its",
        "# embedded default under data_dir. Relative paths are relative to this file.",
        "# Reference: docs/config.md. Check it with: multistore doctor; multistore status",
        "",
        "[multistore]",
        f'data_dir = "{DEFAULT_DATA_DIR}"   # where the embedded stores live',
        "",
        "[roles]",
    ]
    for role, (model, default, holds) in ROLES.items():
        lines.append(f"# {role}: {holds} ({model})")
        if role in assigned:
            url = assigned[role].render(hide_password=False)
            lines.append(f'{role:<{width}} = "{url}"')
            lines.append(f'# {role:<{width}} = "{default}"   # the embedded default')
        else:
            lines.append(f'# {role:<{width}} = "{default}"   # embedded (the default)')
            lines.append(f'# {role:<{width}} = "{_EXAMPLES[model]}"   # on a server')
    extras = sorted({EXTRAS[url.scheme] for url in assigned.values()})
    if extras:
        lines[4:4] = [
            f"# The server drivers this file needs: pip install 'multistore[{','.join(extras)}]'",
        ]
    lines += [
        "",
        "# Two-phase commit participants that `multistore recover` resolves:",
        "# [participants]",
        '# orders   = "postgresql://shop@127.0.0.1:5432/orders"',
        '# payments = "mariadb://shop@127.0.0.1:3306/payments"',
        "",
        "# Replication topologies that `multistore status` reports:",
        "# [replication.router]",
        '# primary  = "postgresql://app@db1/shop"',
        '# replicas = ["postgresql://app@db2/shop"]',
        "# [replication.quorum]",
        '# url = "quorum:///quorum?nodes=3&n=3"',
        "",
    ]
    return "\n".join(lines), {role: url.render() for role, url in assigned.items()}


def run_init(
    path: Path | None, *, servers: Sequence[str], force: bool, quiet: bool
) -> dict[str, Any]:
    """Write the file (``./multistore.toml`` by default); refuse to replace one."""
    target = (path or Path(DEFAULT_FILE)).absolute()
    if target.is_dir():
        target = target / DEFAULT_FILE
    if target.exists() and not force:
        raise UsageError(f"{target} exists; keep it, or pass --force to replace it")
    if not target.parent.is_dir():
        raise UsageError(f"cannot write {target}: the folder {target.parent} does not exist")
    text, on_servers = render_config(servers)
    fd, temp = tempfile.mkstemp(prefix=".multistore-", suffix=".toml", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        try:
            load_config(temp)  # what we write must load
        except ConfigError as exc:  # pragma: no cover - render_config is wrong
            raise ConfigError(f"multistore init made a file that does not load: {exc}") from None
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    embedded = [role for role in ROLES if role not in on_servers]
    if not quiet:
        console = Console(highlight=False)
        console.print(f"wrote {escape(str(target))}")
        for role, url in on_servers.items():
            console.print(f"  {role:<12} {escape(url)}")
        if embedded:
            console.print(f"  embedded: {', '.join(embedded)}")
        console.print("next: multistore doctor (drivers and servers), then multistore status")
    return {"path": str(target), "servers": on_servers, "embedded": embedded}
