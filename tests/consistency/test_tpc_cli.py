"""`multistore recover` as an operator runs it: a coordinator SIGKILLed after logging
its commit decision leaves prepared branches; the command commits them everywhere."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from multistore import ErrorCode
from multistore.lab.servers import PostgresServer
from tests.cli import run_cli
from tests.consistency.bank import assert_all_or_nothing, create_bank, snapshot
from tests.consistency.checks import in_doubt, nothing_in_doubt

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[2]


def test_recover_command_commits_what_the_log_decided(
    postgres_server: PostgresServer, postgres_url: str, mariadb_url: str, tmp_path: Path
) -> None:
    urls = {
        "pg1": postgres_url,
        "pg2": postgres_server.create_database(),
        "maria": mariadb_url,
        "lite": f"sqlite:///{tmp_path / 'lite.db'}",
    }
    asyncio.run(create_bank(urls))
    node = "cli-crash"
    log = f"sqlite:///{tmp_path / 'log.db'}"
    crash = {
        "participants": urls,
        "log": log,
        "node": node,
        "count": 2,
        "crash_tx": 1,
        "crash_event": "decided",
        "crash_nth": 1,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "tests.consistency.tpc_crash_script", json.dumps(crash)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert any(in_doubt(urls, node).values()), "the crash left nothing prepared"

    config = tmp_path / "multistore.toml"
    config.write_text(
        f'[roles]\ntransactions = "{log}"\nsagas = "sqlite:///{tmp_path / "sagas.db"}"\n'
        "[participants]\n" + "".join(f'{name} = "{url}"\n' for name, url in urls.items())
    )
    result = run_cli("recover", "--json", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["transactions"]["resolved"] is True
    assert report["transactions"]["committed"], report
    assert report["stuck_sagas"] == []
    assert nothing_in_doubt(urls, node)
    assert assert_all_or_nothing(asyncio.run(snapshot(urls))) == {"t0", "t1"}


def test_recover_command_rejects_a_malformed_participant(tmp_path: Path) -> None:
    result = run_cli("recover", "--participant", "no-equals-sign", cwd=tmp_path)
    assert result.returncode == int(ErrorCode.USAGE)
    assert "NAME=URL" in result.stderr
