"""``multistore init`` and ``multistore doctor``, the first two commands a newcomer
runs: a commented config that loads, for embedded stores or for named servers, and a
check of what that config needs with the fix for each thing that is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from multistore import ErrorCode, load_config
from multistore.config import ROLES
from multistore.lab.servers import PostgresServer, RedisServer
from tests.cli import run_cli
from tests.test_optional_drivers import BLOCKER


def test_init_writes_a_commented_config_of_embedded_defaults(tmp_path: Path) -> None:
    result = run_cli("init", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    path = tmp_path / "multistore.toml"
    text = path.read_text()
    config = load_config(path)
    assert all(spec.is_default for spec in config.roles.values())
    for role, (_, default, holds) in ROLES.items():
        assert f"# {role}: {holds}" in text
        assert f'= "{default}"' in text
    assert "multistore doctor" in result.stdout
    # only the file: init creates no store
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multistore.toml"]


def test_init_puts_the_roles_a_server_serves_on_it(tmp_path: Path) -> None:
    pg, redis = "postgresql://shop:s3cret@db1.example:5432/shop", "redis://cache.example:6379/0"
    result = run_cli("init", "--server", pg, "-s", redis, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    config = load_config(tmp_path / "multistore.toml")
    schemes = {role: spec.url.scheme for role, spec in config.roles.items()}
    assert schemes == {
        "sessions": "redis",
        "profiles": "postgresql",
        "catalog": "postgresql",
        "orders": "postgresql",
        "social": "ladybug",
        "metrics": "duckdb",
        "readings": "sqlite",
        "idempotency": "redis",
        "sagas": "postgresql",
        "transactions": "postgresql",
    }
    assert config.role("profiles").url.password == "s3cret"
    assert "s3cret" not in result.stdout  # the report hides it
    assert report["embedded"] == ["social", "metrics", "readings"]
    text = (tmp_path / "multistore.toml").read_text()
    assert "pip install 'multistore[postgres,redis]'" in text


def test_init_never_replaces_a_file_without_force(tmp_path: Path) -> None:
    path = tmp_path / "multistore.toml"
    path.write_text("# mine\n")
    result = run_cli("init", cwd=tmp_path)
    assert result.returncode == int(ErrorCode.USAGE)
    assert result.stderr.startswith("error[usage]: ") and "--force" in result.stderr
    assert path.read_text() == "# mine\n"
    assert run_cli("init", "--force", cwd=tmp_path).returncode == 0
    assert path.read_text() != "# mine\n"


@pytest.mark.parametrize(
    ("server", "fragment"),
    [
        ("sqlite:///x.db", "names a file, not a server"),
        ("postgress://h/db", "did you mean postgresql://?"),
    ],
)
def test_init_refuses_what_is_not_a_server(tmp_path: Path, server: str, fragment: str) -> None:
    result = run_cli("init", "--server", server, cwd=tmp_path)
    assert result.returncode == int(ErrorCode.USAGE)
    assert fragment in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_doctor_on_embedded_defaults_passes_and_creates_nothing(tmp_path: Path) -> None:
    result = run_cli("doctor", cwd=tmp_path, env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "everything this config needs is here and answers" in result.stdout
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
    assert list(tmp_path.iterdir()) == []


def _doctor(tmp_path: Path, toml: str) -> tuple[int, dict[str, dict[str, object]], str]:
    (tmp_path / "multistore.toml").write_text(toml)
    text = run_cli("doctor", cwd=tmp_path, env={"COLUMNS": "100"})
    result = run_cli("doctor", "--json", cwd=tmp_path)
    checks = {str(c["detail"]).split("\n")[0]: c for c in json.loads(result.stdout)["checks"]}
    assert text.returncode == result.returncode
    return result.returncode, checks, text.stdout


def test_doctor_names_a_server_that_does_not_answer_and_the_fix(tmp_path: Path) -> None:
    code, checks, text = _doctor(
        tmp_path,
        '[roles]\nsessions = "redis://127.0.0.1:1/0"\n'
        'profiles = "postgresql://shop@no-such-host.invalid/shop"\n',
    )
    assert code == int(ErrorCode.STORE_UNAVAILABLE)
    down = checks["redis://127.0.0.1:1/0 (roles.sessions)"]
    assert down["ok"] is False
    assert (
        down["fix"]
        == "nothing answers at 127.0.0.1:1: start the server there, or fix roles.sessions"
    )
    unknown = checks["postgresql://shop@no-such-host.invalid:5432/shop (roles.profiles)"]
    assert unknown["ok"] is False
    assert "no-such-host.invalid does not resolve: fix roles.profiles" in str(unknown["fix"])
    assert "fix: nothing answers at 127.0.0.1:1" in " ".join(text.split())


def test_doctor_names_a_missing_driver_with_this_environments_pip(tmp_path: Path) -> None:
    import sys

    (tmp_path / "sitecustomize.py").write_text(BLOCKER)  # no server driver importable
    (tmp_path / "multistore.toml").write_text('[roles]\nsessions = "redis://127.0.0.1:1/0"\n')
    result = run_cli("doctor", "--json", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == int(ErrorCode.CONFIG), result.stderr
    checks = {c["check"]: c for c in json.loads(result.stdout)["checks"]}
    redis = checks["driver redis"]
    assert redis["ok"] is False
    assert redis["fix"] == f"{Path(sys.executable).as_posix()} -m pip install 'multistore[redis]'"
    assert checks["driver postgresql"]["ok"] is None  # not needed: information only


@pytest.mark.server
def test_init_for_real_servers_then_doctor_and_status_pass(
    tmp_path: Path, postgres_server: PostgresServer, redis_server: RedisServer
) -> None:
    shop = postgres_server.create_database()
    result = run_cli("init", "--server", shop, "--server", redis_server.url(3), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    doctor = run_cli("doctor", "--json", cwd=tmp_path)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    servers = [c for c in json.loads(doctor.stdout)["checks"] if c["check"] == "server"]
    assert len(servers) == 2 and all(c["ok"] for c in servers)
    status = run_cli("status", "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    rows = {r["role"]: r for r in json.loads(status.stdout)["roles"]}
    assert rows["profiles"]["state"] == "ok" and rows["sessions"]["state"] == "ok"
    assert rows["social"]["state"] == "not created yet"
