"""PostgreSQL under Patroni (Debian's ``patroni`` 3.0) with an etcd cluster as its DCS.

:class:`PatroniMember` runs one Patroni process (as ``postgres``), which runs and
supervises its own PostgreSQL 15: it initialises the first member, makes the others
replicas with ``pg_basebackup``, and elects a new leader through etcd when the leader
is gone. :class:`PatroniCluster` starts ``size`` members against an
:class:`~multistore.lab._etcd.EtcdCluster` and waits until one leads and the others
stream from it.

Timings are short for a loopback lab (``ttl`` 10 s, ``loop_wait`` 1 s,
``retry_timeout`` 3 s): a killed leader is replaced within about ``ttl``. With
``synchronous=True`` Patroni's ``synchronous_mode`` is on: a commit returns only
once a synchronous standby has it, and only that standby may be promoted.

:meth:`PatroniMember.kill` kills Patroni *and* its postmaster (Patroni starts
PostgreSQL in a session of its own, so killing Patroni's process group alone would
leave PostgreSQL running): the crash of the whole machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from multistore.lab._etcd import EtcdCluster
from multistore.lab._postgres import PG_BIN
from multistore.lab._process import (
    LOOPBACK,
    START_TIMEOUT,
    LabError,
    ServerGroup,
    ServerProcess,
    free_port,
    unique_name,
)

__all__ = ["PATRONI", "PatroniCluster", "PatroniMember", "patroni_get"]

PATRONI = Path("/usr/bin/patroni")
_POLL = 0.1


def patroni_get(address: str, path: str, timeout: float = 2.0) -> tuple[int, Any]:
    """``GET http://address/path`` on a Patroni REST API: (status, JSON body or None)."""
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=timeout) as reply:
            status, body = reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    try:
        return status, json.loads(body) if body else None
    except ValueError:
        return status, None


class PatroniMember(ServerProcess):
    """One Patroni member and the PostgreSQL it runs (``port`` is PostgreSQL's)."""

    name = "patroni"
    run_as = "postgres"
    stop_signal = signal.SIGTERM  # Patroni stops PostgreSQL, then exits

    def __init__(
        self,
        member: str,
        *,
        scope: str,
        etcd: EtcdCluster,
        synchronous: bool = False,
        port: int | None = None,
    ) -> None:
        super().__init__(port=port if port is not None else free_port())
        self.member = member
        self.scope = scope
        self.etcd = etcd
        self.synchronous = synchronous
        self.rest_port = free_port()

    @property
    def rest_address(self) -> str:
        return f"{LOOPBACK}:{self.rest_port}"

    def required_binaries(self) -> list[tuple[str, str]]:
        return [
            (str(PATRONI), "apt package patroni"),
            (str(PG_BIN / "postgres"), "apt package postgresql-15"),
        ]

    def _prepare(self) -> None:
        config = {
            "scope": self.scope,
            "namespace": "/multistore/",
            "name": self.member,
            "log": {"level": "WARNING"},
            "restapi": {"listen": self.rest_address, "connect_address": self.rest_address},
            "etcd3": {"hosts": self.etcd.endpoints()},
            "bootstrap": {
                "dcs": {
                    "ttl": 10,
                    "loop_wait": 1,
                    "retry_timeout": 3,
                    "maximum_lag_on_failover": 16 * 1024 * 1024,
                    "synchronous_mode": self.synchronous,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "parameters": {
                            "wal_level": "replica",
                            "hot_standby": "on",
                            "wal_log_hints": "on",
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "max_prepared_transactions": 20,
                            "wal_receiver_status_interval": 1,
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, "no-locale", {"auth": "trust"}],
            },
            "postgresql": {
                "listen": f"{LOOPBACK}:{self.port}",
                "connect_address": f"{LOOPBACK}:{self.port}",
                "data_dir": str(self.datadir),
                "bin_dir": str(PG_BIN),
                "pgpass": str(self.rootdir / "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres"},
                    "replication": {"username": "postgres"},
                    "rewind": {"username": "postgres"},
                },
                "pg_hba": [
                    "local all all trust",
                    f"host all all {LOOPBACK}/32 trust",
                    f"host replication all {LOOPBACK}/32 trust",
                ],
                "parameters": {
                    "unix_socket_directories": str(self.rootdir),
                    "shared_buffers": "32MB",
                    "fsync": "on",
                    "recovery_init_sync_method": "syncfs",
                },
            },
        }
        path = self.rootdir / "patroni.yml"
        path.write_text(json.dumps(config, indent=1))  # JSON is YAML
        self._chown(path)

    def _command(self) -> list[str]:
        return [str(PATRONI), str(self.rootdir / "patroni.yml")]

    def _env(self) -> dict[str, str]:
        env = super()._env()
        env["PATH"] = "/usr/bin:/bin"  # the system Python that patroni is installed for
        return env

    def _ready(self) -> bool:
        """Patroni's REST API answers (PostgreSQL may still be starting or cloning)."""
        try:
            status, _ = patroni_get(self.rest_address, "/patroni")
        except OSError:
            return False
        return status in (200, 503)

    def _own_port(self) -> int:
        return self.rest_port

    def status(self) -> dict[str, Any]:
        """Patroni's ``GET /patroni`` (role, state, timeline, …) for this member."""
        _, body = patroni_get(self.rest_address, "/patroni")
        return body if isinstance(body, dict) else {}

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def kill(self) -> None:
        """SIGKILL Patroni and its postmaster (in another session): a machine crash."""
        pidfile = self.datadir / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pidfile.read_text().splitlines()[0])
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)  # the postmaster's session
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        super().kill()


class PatroniCluster(ServerGroup):
    """``size`` Patroni members sharing one etcd cluster (started with them unless
    given). :meth:`url` lists every member, leader or not (a libpq seed list)."""

    def __init__(
        self, size: int = 3, *, etcd: EtcdCluster | None = None, synchronous: bool = False
    ) -> None:
        self._own_etcd = etcd is None
        self.etcd = etcd if etcd is not None else EtcdCluster()
        self.scope = unique_name("pg")
        self.synchronous = synchronous
        self.members = [
            PatroniMember(f"pg{i}", scope=self.scope, etcd=self.etcd, synchronous=synchronous)
            for i in range(size)
        ]

    def start(self, timeout: float = START_TIMEOUT * 2) -> None:
        """Start etcd, then the first member (it bootstraps the cluster), then the rest;
        wait until one leads and every other running member streams from it."""
        self.etcd.start()
        first, *rest = self.members
        first.start(timeout)
        self.wait_leader(timeout)
        for member in rest:
            member.start(timeout)
        self.wait_streaming(timeout)

    def cleanup(self) -> None:
        # Thrown away: SIGKILL (Patroni and its postmaster) instead of a clean shutdown
        # with a checkpoint per member, which took seconds each.
        for member in self.members:
            member.kill()
            member.cleanup()
        if self._own_etcd:
            self.etcd.cleanup()

    # -- what Patroni says -----------------------------------------------------------

    def rest_endpoints(self) -> list[str]:
        """``host:port`` of every member's REST API (the router's Patroni endpoints)."""
        return [m.rest_address for m in self.members]

    def url(self, database: str = "postgres") -> str:
        hosts = ",".join(f"{LOOPBACK}:{m.port}" for m in self.members)
        return f"postgresql://postgres@{hosts}/{database}"

    def cluster_view(self) -> dict[str, Any]:
        """Patroni's ``GET /cluster`` from the first running member that answers."""
        for member in self.members:
            if not member.is_running():
                continue
            with contextlib.suppress(OSError):
                status, body = patroni_get(member.rest_address, "/cluster")
                if status == 200 and isinstance(body, dict):
                    return body
        raise LabError("no running Patroni member answers GET /cluster")

    def leader(self) -> PatroniMember | None:
        """The member Patroni names leader now (None while there is none)."""
        with contextlib.suppress(LabError):
            for entry in self.cluster_view().get("members", []):
                if entry.get("role") == "leader" and entry.get("state") == "running":
                    return self.member(entry["name"])
        return None

    def member(self, name: str) -> PatroniMember:
        for member in self.members:
            if member.member == name:
                return member
        raise LabError(f"no Patroni member named {name!r}")

    def wait_leader(
        self, timeout: float = START_TIMEOUT, *, other_than: PatroniMember | None = None
    ) -> PatroniMember:
        """Until a running member leads (not ``other_than``); that member."""
        deadline = time.monotonic() + timeout
        while True:
            leader = self.leader()
            if leader is not None and leader is not other_than and leader.is_running():
                status, _ = patroni_get(leader.rest_address, "/primary")
                if status == 200:
                    return leader
            if time.monotonic() > deadline:
                raise TimeoutError(f"Patroni elected no leader within {timeout:.0f} s")
            time.sleep(_POLL)

    def wait_streaming(self, timeout: float = START_TIMEOUT) -> None:
        """Until every running member but the leader is a replica that runs, streams
        (``GET /replica`` answers 200) and has replayed all the leader wrote (lag 0)."""
        deadline = time.monotonic() + timeout
        leader = self.wait_leader(timeout)
        while True:
            view = {e.get("name"): e for e in self.cluster_view().get("members", [])}
            waiting = [
                m
                for m in self.members
                if m.is_running()
                and m is not leader
                and (
                    view.get(m.member, {}).get("state") != "running"
                    or view.get(m.member, {}).get("lag") not in (0, "0")
                    or patroni_get(m.rest_address, "/replica")[0] != 200
                )
            ]
            if not waiting:
                return
            if time.monotonic() > deadline:
                names = ", ".join(m.member for m in waiting)
                raise TimeoutError(f"Patroni replicas {names} not streaming within {timeout:.0f} s")
            time.sleep(_POLL)
