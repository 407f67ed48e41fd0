"""InfluxDB 1.x launcher: a generated config with every port on loopback."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from multistore.lab._process import (
    LOOPBACK,
    LabError,
    ServerProcess,
    free_port,
    unique_name,
)

__all__ = ["INFLUXD", "InfluxDBServer"]

INFLUXD = Path("/usr/bin/influxd")


class InfluxDBServer(ServerProcess):
    """InfluxDB 1.x, HTTP API on a free port, RPC (default 8088) moved to another free port."""

    name = "influxdb"

    def __init__(self, *, port: int | None = None, rpc_port: int | None = None) -> None:
        super().__init__(port=port)
        self._rpc_port = rpc_port
        self._rpc_port_fixed = rpc_port is not None
        self.config_path = self.rootdir / "influxdb.conf"

    def required_binaries(self) -> list[tuple[str, str]]:
        return [(str(INFLUXD), "apt package influxdb")]

    @property
    def rpc_port(self) -> int:
        if self._rpc_port is None:
            self._rpc_port = free_port()
        return self._rpc_port

    def _choose_new_ports(self) -> None:
        super()._choose_new_ports()
        if not self._rpc_port_fixed:
            self._rpc_port = free_port()

    def _write_config(self) -> None:
        root = self.rootdir
        self.config_path.write_text(
            f"""reporting-disabled = true
bind-address = "{LOOPBACK}:{self.rpc_port}"

[meta]
  dir = "{root / "meta"}"
  logging-enabled = false

[data]
  dir = "{self.datadir}"
  wal-dir = "{root / "wal"}"
  wal-fsync-delay = "0s"
  query-log-enabled = false
  trace-logging-enabled = false

[coordinator]
  log-queries-after = "0s"

[retention]
  enabled = true

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "{LOOPBACK}:{self.port}"
  auth-enabled = false
  log-enabled = false
  write-tracing = false
  pprof-enabled = false

[logging]
  level = "warn"
  suppress-logo = true

[subscriber]
  enabled = false

[continuous_queries]
  log-enabled = false
"""
        )

    def _command(self) -> list[str]:
        self._write_config()  # ports may have changed since the last start
        return [str(INFLUXD), "run", "-config", str(self.config_path)]

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url()}/ping", timeout=1.0) as resp:
                return int(resp.status) == 204
        except (OSError, urllib.error.URLError):
            return False

    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, database: str) -> str:
        return f"influxdb://{self.host}:{self.port}/{database}"

    def query(self, q: str, database: str | None = None, *, method: str = "POST") -> bytes:
        """Run an InfluxQL query over HTTP; the raw JSON response body."""
        fields = {"q": q}
        if database is not None:
            fields["db"] = database
        body = urllib.parse.urlencode(fields).encode()
        request = urllib.request.Request(f"{self.http_url()}/query", data=body, method=method)
        with urllib.request.urlopen(request, timeout=10.0) as resp:
            data: bytes = resp.read()
        if b'"error"' in data:
            raise LabError(f"InfluxDB query {q!r} failed: {data.decode(errors='replace')}")
        return data

    def create_database(self, name: str | None = None) -> str:
        name = name or unique_name()
        self.query(f'CREATE DATABASE "{name}"')
        return self.url(name)
