"""MariaDB 10.11 launcher: InnoDB durable defaults, password-less root over TCP."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from multistore.lab._process import (
    LOOPBACK,
    ServerProcess,
    unique_name,
)

__all__ = ["MARIADBD", "MARIADB_INSTALL_DB", "MariaDBServer"]

MARIADBD = Path("/usr/sbin/mariadbd")
MARIADB_INSTALL_DB = Path("/usr/bin/mariadb-install-db")


class MariaDBServer(ServerProcess):
    """MariaDB 10.11 with InnoDB durable defaults and a password-less ``root`` over TCP."""

    name = "mariadb"
    run_as = "mysql"

    def __init__(self, *, port: int | None = None, extra_args: Sequence[str] = ()) -> None:
        super().__init__(port=port)
        self.socket_path = self.rootdir / "mysqld.sock"
        self.extra_args = list(extra_args)

    def required_binaries(self) -> list[tuple[str, str]]:
        return [
            (str(MARIADBD), "apt package mariadb-server"),
            (str(MARIADB_INSTALL_DB), "apt package mariadb-server"),
        ]

    def _server_options(self) -> list[str]:
        return [
            f"--datadir={self.datadir}",
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M",
            "--innodb-flush-log-at-trx-commit=1",
            "--sync-binlog=1",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
            "--skip-name-resolve",
        ]

    def _prepare(self) -> None:
        self.datadir.mkdir()
        self._chown(self.datadir)
        self._run(
            [
                str(MARIADB_INSTALL_DB),
                "--no-defaults",
                *self._server_options(),
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            "mariadb-install-db",
        )

    def _command(self) -> list[str]:
        return [
            str(MARIADBD),
            "--no-defaults",
            *self._server_options(),
            f"--port={self.port}",
            f"--bind-address={LOOPBACK}",
            f"--socket={self.socket_path}",
            f"--pid-file={self.rootdir / 'mariadbd.pid'}",
            "--log-error",  # no file name: to stderr, i.e. our log
            *self.extra_args,
        ]

    def _socket_connect(self) -> Any:
        import pymysql

        return pymysql.connect(
            unix_socket=str(self.socket_path), user="root", connect_timeout=2, autocommit=True
        )

    def _ready(self) -> bool:
        # A raw probe: PyMySQL leaks its socket when a unix-socket connect is refused.
        # Ready once the server sends its handshake (protocol version 10).
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2.0)
                sock.connect(str(self.socket_path))
                greeting = sock.recv(64)
        except OSError:
            return False
        return len(greeting) > 4 and greeting[4] == 10

    def _after_first_start(self) -> None:
        conn = self._socket_connect()
        try:
            with conn.cursor() as cur:
                for host in ("127.0.0.1", "%"):
                    cur.execute(f"CREATE USER IF NOT EXISTS 'root'@'{host}'")
                    cur.execute(f"GRANT ALL PRIVILEGES ON *.* TO 'root'@'{host}' WITH GRANT OPTION")
        finally:
            conn.close()

    def url(self, database: str = "mysql") -> str:
        return f"mariadb://root@{self.host}:{self.port}/{database}"

    def execute(
        self,
        sql: str,
        params: Sequence[object] | None = None,
        *,
        database: str | None = None,
    ) -> list[tuple[Any, ...]]:
        """Run one statement over TCP in autocommit mode; the rows it returns."""
        import pymysql

        conn = pymysql.connect(
            host=self.host,
            port=self.port,
            user="root",
            database=database,
            connect_timeout=5,
            autocommit=True,
        )
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        finally:
            conn.close()

    def create_database(self, name: str | None = None) -> str:
        name = name or unique_name()
        self.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        return self.url(name)
