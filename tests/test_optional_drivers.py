"""Server drivers are optional extras: with none of them importable, the package, its
public subpackages and the demo on embedded stores still work, and opening a server
URL names the extra to install."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

BLOCKER = textwrap.dedent(
    """
    import sys
    BLOCKED = {
        "psycopg", "psycopg_pool", "pymysql", "redis", "hiredis", "falkordb", "influxdb"
    }

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    """
)


def _run(tmp_path: Path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {k: v for k, v in os.environ.items() if k != "MULTISTORE_CONFIG"}
    env["PYTHONPATH"] = str(tmp_path)
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_public_packages_import_without_server_drivers(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import importlib
        for name in ["multistore", "multistore.core", "multistore.stores",
                     "multistore.stores.kv", "multistore.stores.document",
                     "multistore.stores.search", "multistore.stores.relational",
                     "multistore.stores.graph", "multistore.stores.widecolumn",
                     "multistore.stores.timeseries", "multistore.consistency",
                     "multistore.replication", "multistore.lab.servers", "multistore.cli",
                     "multistore.sync"]:
            importlib.import_module(name)
        try:
            import redis
        except ModuleNotFoundError:
            print("blocked")
        """
    )
    result = _run(tmp_path, code)
    assert result.returncode == 0, result.stderr
    assert "blocked" in result.stdout


def test_server_url_without_its_driver_names_the_extra(tmp_path: Path) -> None:
    """Redis over plain TCP needs no driver (multistore's own client, pure Python
    without hiredis); TLS goes through redis-py, so that URL names the extra."""
    code = textwrap.dedent(
        """
        import asyncio, multistore
        for url in ["redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0"]:
            try:
                asyncio.run(multistore.open_store(url))
            except (multistore.ConfigError, multistore.StoreUnavailableError) as exc:
                print(type(exc).__name__, exc)
        """
    )
    result = _run(tmp_path, code)
    assert result.returncode == 0, result.stderr
    plain, tls = result.stdout.splitlines()
    assert plain.startswith("StoreUnavailableError"), plain  # tried: nothing was missing
    assert tls.startswith("ConfigError") and "pip install 'multistore[redis]'" in tls, tls


def test_sync_api_without_server_drivers(tmp_path: Path) -> None:
    """The sync API's embedded stores work; a server URL names the extra."""
    code = textwrap.dedent(
        """
        import multistore
        from multistore.sync import open_store
        with open_store("sqlite:///kv.db", model="kv") as store:
            store.set("k", "v")
            print(store.get("k"))
        for url in ["redis://127.0.0.1:1/0", "postgresql://u@127.0.0.1:1/db?model=relational"]:
            try:
                open_store(url)
            except multistore.ConfigError as exc:
                print(exc)
        """
    )
    result = _run(tmp_path, code)
    assert result.returncode == 0, result.stderr
    assert "b'v'" in result.stdout
    assert "pip install 'multistore[redis]'" in result.stdout
    assert "pip install 'multistore[postgres]'" in result.stdout


def test_demo_runs_without_server_drivers(tmp_path: Path) -> None:
    code = "import sys; from multistore.cli import main; sys.argv = ['multistore', 'demo']; main()"
    result = _run(tmp_path, code)
    assert result.returncode == 0, result.stderr
    assert "demo finished" in result.stdout
