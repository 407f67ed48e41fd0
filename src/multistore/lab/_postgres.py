"""PostgreSQL 15 launcher: durable settings, 2PC enabled, streaming standbys."""

from __future__ import annotations

import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from multistore.lab._process import (
    LOOPBACK,
    ServerProcess,
    unique_name,
)

__all__ = ["PG_BIN", "PostgresServer"]

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class PostgresServer(ServerProcess):
    """PostgreSQL 15 with trust auth on loopback for user ``postgres``, durable settings,
    prepared transactions enabled and streaming replication allowed."""

    name = "postgres"
    run_as = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back sessions, checkpoint, exit

    def __init__(
        self,
        *,
        max_prepared_transactions: int = 20,
        wal_level: str = "replica",
        extra_conf: Mapping[str, str | int] | None = None,
        port: int | None = None,
        bindir: Path = PG_BIN,
    ) -> None:
        super().__init__(port=port)
        self.bindir = bindir
        self.settings: dict[str, str | int] = {
            "listen_addresses": LOOPBACK,
            "unix_socket_directories": str(self.rootdir),
            "max_prepared_transactions": max_prepared_transactions,
            "wal_level": wal_level,
            "max_wal_senders": 10,
            "max_replication_slots": 10,
            "hot_standby": "on",
            "fsync": "on",
            # After a crash, one syncfs() of the file system instead of an fsync() of
            # every file of every test database: on a loaded machine the per-file walk
            # took over a minute, and the next start met the lingering postmaster.
            "recovery_init_sync_method": "syncfs",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "max_connections": 100,
            "shared_buffers": "32MB",
            "logging_collector": "off",
            "log_min_messages": "warning",
        }
        self.settings.update(extra_conf or {})
        self._primary: PostgresServer | None = None

    def required_binaries(self) -> list[tuple[str, str]]:
        return [
            (str(self.bindir / "postgres"), "apt package postgresql-15"),
            (str(self.bindir / "initdb"), "apt package postgresql-15"),
            (str(self.bindir / "pg_basebackup"), "apt package postgresql-client-15"),
        ]

    @classmethod
    def standby_of(cls, primary: PostgresServer, *, start: bool = True) -> PostgresServer:
        """A streaming-replication hot standby of a running ``primary`` (``pg_basebackup -R``)."""
        standby = cls(
            max_prepared_transactions=int(primary.settings["max_prepared_transactions"]),
            wal_level=str(primary.settings["wal_level"]),
            extra_conf={
                k: v
                for k, v in primary.settings.items()
                if k not in ("listen_addresses", "unix_socket_directories")
            },
            bindir=primary.bindir,
        )
        standby._primary = primary
        if start:
            standby.start()
        return standby

    def _prepare(self) -> None:
        if self._primary is not None:
            self._run(
                [
                    str(self.bindir / "pg_basebackup"),
                    f"--pgdata={self.datadir}",
                    f"--host={LOOPBACK}",
                    f"--port={self._primary.port}",
                    "--username=postgres",
                    "--wal-method=stream",
                    "--checkpoint=fast",
                    "--write-recovery-conf",
                    "--no-sync",
                ],
                "pg_basebackup",
            )
            return
        self._run(
            [
                str(self.bindir / "initdb"),
                f"--pgdata={self.datadir}",
                "--username=postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            "initdb",
        )
        (self.datadir / "pg_hba.conf").write_text(
            "# multistore lab: trust on loopback only\n"
            "local   all          all                  trust\n"
            "host    all          all   127.0.0.1/32   trust\n"
            "local   replication  all                  trust\n"
            "host    replication  all   127.0.0.1/32   trust\n"
        )

    def _command(self) -> list[str]:
        command = [str(self.bindir / "postgres"), "-D", str(self.datadir), "-p", str(self.port)]
        for key, value in self.settings.items():
            command += ["-c", f"{key}={value}"]
        return command

    def _ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url(), connect_timeout=2, autocommit=True) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def execute(
        self,
        sql: str,
        params: Sequence[object] | None = None,
        *,
        database: str = "postgres",
    ) -> list[tuple[Any, ...]]:
        """Run one statement in autocommit mode; the rows it returns (empty if none)."""
        import psycopg

        with psycopg.connect(self.url(database), connect_timeout=5, autocommit=True) as conn:
            cur = conn.execute(sql.encode(), params)  # bytes: a runtime-built query
            return list(cur.fetchall()) if cur.description is not None else []

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh, uniquely named database; its URL."""
        name = name or unique_name()
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
