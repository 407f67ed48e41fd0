"""``multistore doctor``: is everything this config needs here and reachable?

It checks, and for each check that fails says how to fix it:

* Python (3.11 or newer) and the config file (it loads);
* the drivers: every server driver is listed; one that the config needs and that is
  not installed fails, with the ``pip install`` command of this environment;
* the embedded stores' folder: it exists or can be created (nothing is created);
* every server the config names (roles, ``[participants]``, ``[replication]``): it
  answers, within a short timeout; a server that does not gets the likely cause
  (nothing listening, a name that does not resolve, a refused password, a missing
  database) and the key of the config to look at.

Like ``status`` it only looks. The exit code is 0 when every check passes, else the
code of the first that failed (10 a config or a missing driver, 51 a server down).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from multistore.cli._human import duration, table
from multistore.config import Config, load_config
from multistore.errors import (
    ConfigError,
    ErrorCode,
    MultistoreError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from multistore.stores import BACKENDS, EXTRAS
from multistore.stores._base import Store
from multistore.urls import StoreURL, parse_url

__all__ = ["DRIVERS", "run_doctor"]

DRIVERS: dict[str, tuple[str, ...]] = {
    "postgresql": ("psycopg", "psycopg_pool"),
    "mariadb": ("pymysql",),
    "redis": ("redis",),
    "falkordb": ("falkordb", "redis"),
    "influxdb": ("influxdb",),
}
"""scheme -> the modules its driver is (the pip extra that brings them: ``EXTRAS``)."""

_CONNECT_TIMEOUT = 3.0


@dataclass
class Check:
    """One line of the report."""

    what: str
    ok: bool | None  # None: not needed here (information only)
    detail: str
    fix: str = ""
    code: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.what,
            "ok": self.ok,
            "detail": self.detail,
            "fix": self.fix,
            "code": self.code or None,
        }


def _pip() -> str:
    """The pip of the environment multistore runs in."""
    return f"{Path(sys.executable).as_posix()} -m pip install"


def _servers(config: Config) -> dict[str, tuple[str, str, StoreURL]]:
    """Each distinct server URL the config names -> (where it is named, model, URL)."""
    named: dict[str, tuple[str, str, StoreURL]] = {}

    def add(where: str, model: str, url: StoreURL) -> None:
        if url.is_file:
            return
        key = url.render()
        named.setdefault(key, (where, model, url))

    for role, spec in config.roles.items():
        add(f"roles.{role}", spec.model, spec.url)
    for name, url in config.participants.items():
        add(f"participants.{name}", "relational", url)
    replication = config.replication
    if replication is not None:
        if replication.router_primary is not None:
            add("replication.router.primary", "relational", replication.router_primary)
        for i, url in enumerate(replication.router_replicas):
            add(f"replication.router.replicas[{i}]", "relational", url)
        for node, url in replication.multimaster_nodes.items():
            add(f"replication.multimaster.nodes.{node}", "relational", url)
        if replication.quorum is not None:
            add("replication.quorum.url", "widecolumn", replication.quorum)
    return named


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported (found, not imported: doctor stays quick)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def _driver_checks(needed: dict[str, str]) -> list[Check]:
    checks = []
    for scheme, modules in DRIVERS.items():
        extra = EXTRAS[scheme]
        missing = [m for m in modules if not _installed(m)]
        label = f"driver {scheme}"
        if not missing:
            checks.append(Check(label, True, f"installed ({', '.join(modules)})"))
        elif scheme in needed:
            checks.append(
                Check(
                    label,
                    False,
                    f"{', '.join(missing)} not installed; {needed[scheme]} needs it",
                    f"{_pip()} 'multistore[{extra}]'",
                    int(ErrorCode.CONFIG),
                )
            )
        else:
            checks.append(
                Check(
                    label,
                    None,
                    "not installed (no role needs it)",
                    f"pip install 'multistore[{extra}]'",
                )
            )
    return checks


def _data_dir_check(config: Config) -> Check:
    folder = config.data_dir
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == folder and folder.is_dir():
        writable = os.access(folder, os.W_OK)
        detail = f"{folder} exists" + ("" if writable else ", but is not writable")
    elif existing.is_dir():
        writable = os.access(existing, os.W_OK)
        detail = f"{folder} will be created on first use" + (
            "" if writable else f", but {existing} is not writable"
        )
    else:
        writable = False
        detail = f"{folder} cannot be created: {existing} is a file"
    fix = "" if writable else "set multistore.data_dir to a folder you can write"
    return Check("embedded stores", writable, detail, fix, 0 if writable else int(ErrorCode.CONFIG))


def _cause(error: MultistoreError, url: StoreURL, where: str) -> str:
    text = error.message.lower()
    at = f"{url.host}:{url.port}"
    if isinstance(error, ConfigError) and "not installed" in text:
        return "install the driver (see above)"
    if "resolve" in text or "name or service not known" in text or "nodename" in text:
        return f"the host name {url.host} does not resolve: fix {where}"
    if any(
        w in text for w in ("password", "authentication", "access denied", "noauth", "wrongpass")
    ):
        return f"the server refused the user or password: fix the credentials in {where}"
    if "does not exist" in text or "unknown database" in text:
        return f"create the database {url.database!r} on {at}, or fix {where}"
    if isinstance(error, StoreTimeoutError):
        waited = duration(_CONNECT_TIMEOUT)
        return f"{at} did not answer in {waited}: a firewall or the wrong port? fix {where}"
    if isinstance(error, StoreUnavailableError):
        return f"nothing answers at {at}: start the server there, or fix {where}"
    return f"check {where} and the server at {at}"


async def _server_check(where: str, model: str, url: StoreURL) -> Check:
    from multistore.stores._registry import backend_class

    label = "server"
    named = f"{url.render()} ({where})"
    options: dict[str, object] = {}
    if "connect_timeout" not in url.options and url.scheme != "quorum":
        options["connect_timeout"] = _CONNECT_TIMEOUT
    if "timeout" not in url.options:
        options["timeout"] = _CONNECT_TIMEOUT
    try:
        probe = parse_url(url, **options)
        if (model, url.scheme) not in BACKENDS:
            model = next(m for (m, s) in BACKENDS if s == url.scheme)
        cls = backend_class(model, url.scheme)
        started = asyncio.get_running_loop().time()
        store: Store = await asyncio.wait_for(cls.open(probe), _CONNECT_TIMEOUT * 2)
    except TimeoutError:
        error: MultistoreError = StoreTimeoutError("no answer")
        return Check(
            label, False, f"{named}\nno answer", _cause(error, url, where), int(error.code)
        )
    except MultistoreError as exc:
        detail = " ".join(f"{type(exc).__name__}: {exc.message}".split())
        return Check(label, False, f"{named}\n{detail}", _cause(exc, url, where), int(exc.code))
    try:
        took = asyncio.get_running_loop().time() - started
        return Check(label, True, f"{named}\nanswers in {duration(took)}")
    finally:
        await store.close()


async def run_doctor(config_path: Path | None, *, quiet: bool) -> dict[str, Any]:
    """Run every check; print them unless ``quiet``; return the report."""
    checks: list[Check] = []
    version = ".".join(map(str, sys.version_info[:3]))
    checks.append(
        Check(
            "Python",
            sys.version_info >= (3, 11),
            f"{version} ({sys.executable})",
            "" if sys.version_info >= (3, 11) else "use Python 3.11 or newer",
        )
    )
    config: Config | None = None
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        checks.append(
            Check("config", False, exc.message, "fix the file as the message says", int(exc.code))
        )
    if config is not None:
        source = str(config.path) if config.path else "no multistore.toml: embedded defaults"
        checks.append(
            Check("config", True, source, "" if config.path else "multistore init writes one")
        )
        servers = _servers(config)
        needed: dict[str, str] = {}
        for where, _, url in servers.values():
            scheme = "redis" if url.scheme == "quorum" else url.scheme
            needed.setdefault(scheme, where)
        checks += _driver_checks(needed)
        checks.append(_data_dir_check(config))
        results = await asyncio.gather(
            *(_server_check(where, model, url) for where, model, url in servers.values())
        )
        checks += results
        if not servers:
            checks.append(Check("servers", None, "none configured: every role is embedded"))
    failed = [c for c in checks if c.ok is False]
    if not quiet:
        _print(checks)
    return {
        "ok": not failed,
        "checks": [c.as_dict() for c in checks],
        "exit_code": failed[0].code or int(ErrorCode.UNKNOWN) if failed else 0,
    }


def _print(checks: list[Check]) -> None:
    console = Console(highlight=False)
    shown = table("", "check", "result")
    for check in checks:
        mark = {True: "[green]✓[/]", False: "[red]✗[/]", None: "[dim]-[/]"}[check.ok]
        result = escape(check.detail)
        if check.fix and check.ok is False:
            result += f"\n[bold]fix: {escape(check.fix)}[/]"
        elif check.fix and check.ok is None:
            result += f"\n[dim]to use it: {escape(check.fix)}[/]"
        shown.add_row(mark, escape(check.what), result)
    console.print(shown)
    failed = sum(1 for c in checks if c.ok is False)
    if failed:
        console.print(Text.from_markup(f"\n[red]{failed} check(s) failed[/]; the fixes are above."))
    else:
        console.print(
            Text.from_markup("\n[green]everything this config needs is here and answers[/]")
        )
