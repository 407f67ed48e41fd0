"""`multistore recover` as an operator runs it: a coordinator SIGKILLed after logging
its commit decision leaves prepared branches; the command commits them everywhere."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from multistore import ErrorCode
from multistore.consistency import TransactionCoordinator, TransactionIndeterminateError
from multistore.core._tpc import Xid
from multistore.lab.proxy import TcpProxy
from multistore.lab.servers import MariaDBServer, PostgresServer
from multistore.stores import open_store
from multistore.stores.relational import RelationalStore
from tests.cli import run_cli
from tests.consistency.bank import assert_all_or_nothing, create_bank, snapshot, transfer
from tests.consistency.checks import in_doubt, kill_coordinator, nothing_in_doubt


class Stop(BaseException):
    """The app's coordinator stops at a protocol point (raised from an event hook)."""


@pytest.mark.server
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
    kill_coordinator(crash)
    assert any(in_doubt(urls, node).values()), "the crash left nothing prepared"

    config = tmp_path / "multistore.toml"
    config.write_text(
        f'[roles]\ntransactions = "{log}"\nsagas = "sqlite:///{tmp_path / "sagas.db"}"\n'
        "[participants]\n" + "".join(f'{name} = "{url}"\n' for name, url in urls.items())
    )
    # --retry-for: the killed coordinator's lease runs out within a second
    result = run_cli(
        "recover", "--json", "--config", str(config), "--retry-for", "20", cwd=tmp_path
    )
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


def _balance(url: str) -> int:
    """Account 0's balance."""

    async def read() -> int:
        store = await open_store(url, model="relational")
        assert isinstance(store, RelationalStore)
        try:
            return int(await store.fetch_val("SELECT balance FROM accounts WHERE id = 0"))
        finally:
            await store.close()

    return asyncio.run(read())


@pytest.mark.server
def test_operator_recovers_an_apps_transfer_with_no_options(
    postgres_url: str,
    mariadb_server: MariaDBServer,
    mariadb_url: str,
    tcp_proxy: Callable[[str, int], TcpProxy],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The app opens a coordinator with its defaults and moves 10 from PostgreSQL to
    MariaDB; MariaDB's connection dies once commit is decided. The operator runs
    `multistore recover -p a=… -p b=…` in the app's folder, as the docs say: the
    transfer ends 990 + 1010."""
    proxy = tcp_proxy("127.0.0.1", mariadb_server.port)
    direct = {"a": postgres_url, "b": mariadb_url}
    app = {"a": postgres_url, "b": f"mariadb://root@127.0.0.1:{proxy.port}/{_db(mariadb_url)}"}
    asyncio.run(create_bank(direct))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MULTISTORE_CONFIG", raising=False)

    def on_event(event: str, xid: Xid, name: str) -> None:
        if event == "decided":
            proxy.cut()

    async def run_app() -> None:
        async with await TransactionCoordinator.open(
            app, on_event=on_event, commit_timeout=5
        ) as coordinator:
            with pytest.raises(TransactionIndeterminateError, match="recovery will commit them"):
                await transfer(coordinator, 0, ["a", "b"])

    asyncio.run(run_app())
    proxy.restore()
    result = run_cli("recover", "-p", f"a={postgres_url}", "-p", f"b={mariadb_url}", cwd=tmp_path)
    assert (_balance(postgres_url), _balance(mariadb_url)) == (990, 1010)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "participants checked: a, b" in result.stdout


@pytest.mark.server
def test_recovery_with_one_log_leaves_another_logs_branches_and_names_it(
    postgres_server: PostgresServer, postgres_url: str, mariadb_url: str, tmp_path: Path
) -> None:
    """Two apps, two decision logs in one PostgreSQL server, the same participants; both
    stop after deciding commit. Recovery with log A commits A's transfer, leaves B's
    prepared, exits non-zero and says which log to pass; then recovery with log B."""
    urls = {"pg": postgres_url, "maria": mariadb_url}
    asyncio.run(create_bank(urls))
    logs = {"A": postgres_server.create_database(), "B": postgres_server.create_database()}

    def stop(event: str, xid: Xid, name: str) -> None:
        if event == "decided":
            raise Stop

    async def crash(log: str, n: int) -> str:
        async with await TransactionCoordinator.open(urls, log=log, on_event=stop) as c:
            with pytest.raises(Stop):
                await transfer(c, n, list(urls))
            return c.node

    node_a = asyncio.run(crash(logs["A"], 0))
    node_b = asyncio.run(crash(logs["B"], 1))
    participants = [arg for name, url in urls.items() for arg in ("-p", f"{name}={url}")]

    first = run_cli("recover", "--log", logs["A"], *participants, cwd=tmp_path)
    assert first.returncode == int(ErrorCode.TRANSACTION_INDETERMINATE), first.stderr
    [line] = first.stderr.strip().splitlines()
    assert f"run multistore recover --log {logs['B']}" in line
    assert nothing_in_doubt(urls, node_a)
    assert all(in_doubt(urls, node_b).values())  # left prepared
    assert assert_all_or_nothing(asyncio.run(snapshot(urls))) == {"t0"}

    second = run_cli("recover", "--json", "--log", logs["B"], *participants, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["transactions"]["nodes"] == [node_b]
    assert nothing_in_doubt(urls, node_b)
    assert assert_all_or_nothing(asyncio.run(snapshot(urls))) == {"t0", "t1"}


def test_recover_says_plainly_that_nothing_was_checked_and_creates_nothing(
    tmp_path: Path,
) -> None:
    result = run_cli("recover", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    said = " ".join(result.stdout.split())  # folded to the console's 80 columns
    assert "nothing was checked: no two-phase-commit participants are configured" in said
    assert max(len(line) for line in result.stdout.splitlines()[:2]) <= 80
    assert "[participants]" in result.stdout
    assert not (tmp_path / ".multistore").exists()  # no log, no saga store made


def test_recover_refuses_a_node_whose_coordinator_is_alive(tmp_path: Path) -> None:
    urls = {name: f"sqlite:///{tmp_path / name}.db" for name in ("a", "b")}
    log = f"sqlite:///{tmp_path / 'log.db'}"

    async def body() -> None:
        async with await TransactionCoordinator.open(urls, log=log, node="app-1"):
            args = ["recover", "--log", log, "--node", "app-1"]
            args += [arg for name, url in urls.items() for arg in ("-p", f"{name}={url}")]
            result = await asyncio.to_thread(run_cli, *args, cwd=tmp_path)
        assert result.returncode == int(ErrorCode.CONFLICT), result.stdout + result.stderr
        [line] = result.stderr.strip().splitlines()
        assert "node 'app-1' is held by a live coordinator" in line

    asyncio.run(body())


def _db(url: str) -> str:
    return url.rsplit("/", 1)[1]
