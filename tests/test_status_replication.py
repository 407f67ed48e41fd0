"""`multistore status --json` reports the replication topologies named in
[replication]: each router node's role, lag and health; each multi-master node's
positions and conflict count; the quorum cluster's membership."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from multistore import ConfigError, ErrorCode, load_config
from multistore.core import LWW
from multistore.replication import MultiMasterNode, QuorumWideColumnStore, Router
from tests.cli import run_cli

TOPOLOGIES = (
    "[replication.router]\n"
    'primary = "sqlite:///rt/primary.db"\n'
    'replicas = ["sqlite:///rt/r1.db", "sqlite:///rt/r2.db"]\n'
    "[replication.multimaster]\n"
    'strategy = "merge_carts"\n'
    'nodes = { a = "sqlite:///mm/a.db", b = "sqlite:///mm/b.db" }\n'
    "[replication.quorum]\n"
    'url = "quorum:///q?nodes=3&n=3"\n'
)


async def _create_topologies(root: Path) -> None:
    """Open each topology of TOPOLOGIES once, as the application would: that makes
    their files (status only looks at them)."""
    for sub in ("rt", "mm", "q"):
        (root / sub).mkdir()
    rt = root / "rt"
    router = await Router.open(
        f"sqlite:///{rt / 'primary.db'}", [f"sqlite:///{rt / 'r1.db'}", f"sqlite:///{rt / 'r2.db'}"]
    )
    await router.close()
    for node_id in ("a", "b"):
        node = await MultiMasterNode.open(
            f"sqlite:///{root / 'mm' / node_id}.db", node_id, resolver=LWW()
        )
        await node.close()
    store = await QuorumWideColumnStore.open_url(f"quorum:///{root / 'q'}?nodes=3&n=3")
    await store.close()


def _status(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("status", "--json", cwd=tmp_path)


def test_status_reports_embedded_topologies(tmp_path: Path) -> None:
    (tmp_path / "multistore.toml").write_text(TOPOLOGIES)
    asyncio.run(_create_topologies(tmp_path))
    result = _status(tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads(result.stdout)["replication"]
    router = report["router"]
    assert router["ok"] is True
    roles = sorted(node["role"] for node in router["nodes"])
    assert roles.count("primary") == 1 and len(roles) == 3
    assert all("lag_seconds" in node and "health" in node for node in router["nodes"])
    mm = report["multimaster"]
    assert mm["ok"] is True
    assert set(mm["nodes"]) == {"a", "b"}
    assert all("conflicts" in node for node in mm["nodes"].values())
    quorum = report["quorum"]
    assert quorum["ok"] is True
    assert quorum["n"] == 3


def test_status_reports_an_unreachable_router_and_fails(tmp_path: Path) -> None:
    (tmp_path / "multistore.toml").write_text(
        "[replication.router]\n"
        'primary = "postgresql://postgres@127.0.0.1:1/db?connect_timeout=1"\n'
        "replicas = []\n"
    )
    result = _status(tmp_path)
    assert result.returncode == int(ErrorCode.STORE_UNAVAILABLE), result.stderr
    router = json.loads(result.stdout)["replication"]["router"]
    assert router["ok"] is False
    assert "Unavailable" in router["error"] or "unreachable" in router["error"].lower()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[replication.ring]\nx = 1\n", "[replication.ring]"),
        ('[replication.router]\nreplicas = ["sqlite:///a.db"]\n', "primary = URL"),
        ('[replication.multimaster]\nnodes = { a = "sqlite:///a.db" }\nstrategy = "x"\n', "x"),
        ('[replication.quorum]\nurl = "sqlite:///a.db"\n', "quorum:// URL"),
    ],
)
def test_bad_replication_section(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "multistore.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_status_reads_topologies_as_tables_without_python_reprs(tmp_path: Path) -> None:
    (tmp_path / "multistore.toml").write_text(TOPOLOGIES)
    asyncio.run(_create_topologies(tmp_path))
    result = run_cli("status", cwd=tmp_path, env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    for fragment in ("{'", "[{", "': ", "LWW()", "None", "True", "False"):
        assert fragment not in out, f"{fragment!r} in:\n{out}"
    assert "replication: router (primary primary, timeline 1)" in out
    assert "replication: multi-master (merge_carts)" in out
    assert "replication: quorum (N=3 R=2 W=2" in out
    assert all(len(line) <= 80 for line in out.splitlines()), out


def test_status_does_not_create_a_topology_that_does_not_exist(tmp_path: Path) -> None:
    (tmp_path / "multistore.toml").write_text(TOPOLOGIES)
    result = _status(tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads(result.stdout)["replication"]
    assert {name: part["state"] for name, part in report.items()} == {
        "router": "not created yet",
        "multimaster": "not created yet",
        "quorum": "not created yet",
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multistore.toml"]
