"""The multistore command as a user runs it: a real subprocess, exit codes from the enum."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from multistore import ErrorCode
from tests.cli import run_cli as _run

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", ["demo", "status", "bench"])
def test_every_command_has_help(command: str, tmp_path: Path) -> None:
    result = _run(command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


@pytest.mark.parametrize(
    ("toml", "code", "fragment"),
    [
        ('[roles]\nsessions = "mongodb://h/db"\n', ErrorCode.CONFIG, "unknown scheme"),
        ('[roles]\nsessions = "redis//h"\n', ErrorCode.CONFIG, "malformed"),
        ('[roles]\nbasket = "redis://h/0"\n', ErrorCode.CONFIG, "unknown role"),
    ],
)
def test_bad_config_gives_one_line_and_the_enum_exit_code(
    tmp_path: Path, toml: str, code: ErrorCode, fragment: str
) -> None:
    (tmp_path / "multistore.toml").write_text(toml)
    result = _run("demo", cwd=tmp_path)
    assert result.returncode == int(code)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0]
    assert lines[0].startswith(f"error[{code.slug}]: ")
    assert "multistore.toml" in lines[0]
    assert "Traceback" not in result.stderr


def test_status_json_reports_every_role(tmp_path: Path) -> None:
    result = _run("status", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {row["role"] for row in report["roles"]} >= {"sessions", "orders", "social"}
    assert all(row["ok"] for row in report["roles"])


def test_status_in_an_empty_folder_creates_nothing(tmp_path: Path) -> None:
    result = _run("status", cwd=tmp_path, env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), result.stdout
    # every default URL whole on its row, as written in multistore.toml
    rows = {line.split()[0]: line for line in lines if line.split()}
    assert "sqlite:///.multistore/transactions.db" in rows["transactions"]
    assert "not created yet" in rows["sessions"]
    report = json.loads(_run("status", "--json", cwd=tmp_path).stdout)
    assert {row["state"] for row in report["roles"]} == {"not created yet"}
    assert list(tmp_path.iterdir()) == []


def test_status_after_the_stores_exist_opens_them(tmp_path: Path) -> None:
    assert _run("demo", "--json", cwd=tmp_path).returncode == 0
    report = json.loads(_run("status", "--json", cwd=tmp_path).stdout)
    assert {row["state"] for row in report["roles"]} == {"ok"}
    assert all(row["seconds"] >= 0 for row in report["roles"])


def test_status_reports_a_down_server_with_its_exit_code(tmp_path: Path) -> None:
    (tmp_path / "multistore.toml").write_text('[roles]\nsessions = "redis://127.0.0.1:1/0"\n')
    result = _run("status", "--json", cwd=tmp_path)
    assert result.returncode == int(ErrorCode.STORE_UNAVAILABLE), result.stderr
    rows = {row["role"]: row for row in json.loads(result.stdout)["roles"]}
    assert rows["sessions"]["ok"] is False
    assert rows["orders"]["ok"] is True


def test_demo_runs_on_embedded_stores_and_reports_json(tmp_path: Path) -> None:
    result = _run("demo", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["config"] is None
    first = report["sections"][0]
    assert all(row["ok"] for row in first["roles"])
    assert (tmp_path / ".multistore").is_dir()


def test_demo_twice_in_the_same_folder(tmp_path: Path) -> None:
    assert _run("demo", "--json", cwd=tmp_path).returncode == 0
    again = _run("demo", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "demo finished" in again.stdout


def test_bench_unknown_name_lists_the_available_ones(tmp_path: Path) -> None:
    result = _run("bench", "nosuch", "--dir", str(REPO / "benchmarks"), cwd=tmp_path)
    assert result.returncode == int(ErrorCode.BENCHMARK)
    assert "stores" in result.stderr


def test_bench_without_a_module_it_needs_says_what_to_install(tmp_path: Path) -> None:
    bench_dir = tmp_path / "benchmarks"
    bench_dir.mkdir()
    (bench_dir / "__init__.py").write_text("")
    (bench_dir / "_harness.py").write_text("")
    (bench_dir / "needy.py").write_text("import no_such_driver_xyz\n")
    result = _run("bench", "needy", cwd=tmp_path)
    assert result.returncode == int(ErrorCode.BENCHMARK), result.stderr
    assert result.stderr.startswith("error[benchmark]: benchmark needy needs the module ")
    assert "no_such_driver_xyz" in result.stderr and "'multistore[all,bench]'" in result.stderr


def test_bench_runs_a_benchmark_and_prints_rows_in_the_design_format(tmp_path: Path) -> None:
    bench_dir = tmp_path / "benchmarks"
    bench_dir.mkdir()
    (bench_dir / "__init__.py").write_text("")
    (bench_dir / "_harness.py").write_text((REPO / "benchmarks" / "_harness.py").read_text())
    (bench_dir / "toy.py").write_text(
        "from benchmarks._harness import compare\n"
        "async def run():\n"
        "    async def ours():\n        sum(range(10))\n"
        "    def anchor():\n        sum(range(1000))\n"
        "    return [await compare('toy sum', ours, anchor, 'builtin', ops=20, rounds=3)]\n"
    )
    table = _run("bench", "toy", cwd=tmp_path, env={"COLUMNS": "100"})
    assert table.returncode == 0, table.stderr
    assert re.search(r"^toy sum\s+\S.*µs/op\s+[\d.]+ µs/op\s+builtin\s+[\d.]+×", table.stdout, re.M)
    result = _run("bench", "toy", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == 1
    assert set(rows[0]) == {"name", "metric", "unit", "ours", "anchor", "anchor_name", "speedup"}
    # ours/anchor are rounded to 0.01 µs, speedup is computed before rounding
    ours, anchor, speedup = rows[0]["ours"], rows[0]["anchor"], rows[0]["speedup"]
    low = (anchor - 0.005) / (ours + 0.005)
    high = (anchor + 0.005) / max(ours - 0.005, 1e-9)
    assert low * 0.999 <= speedup <= high * 1.001


@pytest.mark.parametrize("command", ["status", "demo"])
def test_a_data_dir_that_cannot_be_created_exits_with_the_config_code(
    tmp_path: Path, command: str
) -> None:
    (tmp_path / "afile").write_text("x")
    (tmp_path / "multistore.toml").write_text('[multistore]\ndata_dir = "afile/data"\n')
    result = _run(command, cwd=tmp_path)
    assert result.returncode == int(ErrorCode.CONFIG), result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error[config]: ")
    assert "multistore.data_dir" in lines[0] and "is a file" in lines[0]
    assert "Traceback" not in result.stderr


def test_recover_refuses_a_bad_participant_in_one_line_without_its_password(
    tmp_path: Path,
) -> None:
    """A NAME=URL whose URL does not parse, or an item without NAME=, is refused before
    anything runs; the password never shows."""
    for item, code in (
        ("bank=redis://app:Sec/ret9@127.0.0.1:1/0", ErrorCode.INVALID_URL),
        ("postgresql://app:Secret9@127.0.0.1:1/db", ErrorCode.USAGE),
    ):
        result = _run("recover", "--participant", item, cwd=tmp_path)
        assert result.returncode == int(code), result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error[{code.slug}]: "), result.stderr
        assert "ret9" not in result.stderr + result.stdout
        assert "Secret9" not in result.stderr + result.stdout


def test_recover_with_a_participant_down_says_so_in_one_line(tmp_path: Path) -> None:
    result = _run("recover", "--participant", "cache=redis://127.0.0.1:1/0", cwd=tmp_path)
    code = ErrorCode.TRANSACTION_INDETERMINATE
    assert result.returncode == int(code), result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error[{code.slug}]: "), result.stderr
    assert "could not reach cache" in lines[0]


def _squeezed(text: str) -> str:
    """Terminal output without spaces, line breaks and table borders, so that a value
    folded over several lines of a table cell reads as one word again."""
    return "".join(c for c in text if not c.isspace() and c not in "│┃║|")


@pytest.mark.parametrize("columns", ["80", "120"])
def test_square_brackets_in_messages_and_help_are_printed(tmp_path: Path, columns: str) -> None:
    """rich read ``[...]`` as markup and dropped it: the hint ``multistore[redis]``, a
    data directory ``d[1]``, a participant ``p[1]`` and the help's ``[participants]``
    lost their brackets. Everything the CLI prints from users and messages is literal."""
    from tests.test_optional_drivers import BLOCKER

    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    (tmp_path / "multistore.toml").write_text(
        '[multistore]\ndata_dir = "d[1]"\n[roles]\nsessions = "rediss://127.0.0.1:1/0"\n'
    )
    env = {"PYTHONPATH": str(tmp_path), "COLUMNS": columns}
    help_text = _run("recover", "--help", cwd=tmp_path, env={"COLUMNS": columns})
    assert "addsto[participants])" in _squeezed(help_text.stdout)

    status = _run("status", cwd=tmp_path, env=env)
    assert "'multistore[redis]'" in _squeezed(status.stdout)
    assert "/d[1]/" in _squeezed(status.stdout)
    assert status.returncode == int(ErrorCode.CONFIG), status.stderr
    assert "pip install 'multistore[redis]'" in status.stderr

    recover = _run("recover", "-p", "p[1]=redis://127.0.0.1:1/0", cwd=tmp_path, env=env)
    assert recover.returncode == int(ErrorCode.TRANSACTION_INDETERMINATE), recover.stderr
    assert "p[1]:" in _squeezed(recover.stdout)
    assert "could not reach p[1]" in recover.stderr


def test_every_help_text_escapes_its_square_brackets() -> None:
    """Help texts are rich markup: an unescaped ``[word]`` vanishes from ``--help``
    ("adds to [participants]" printed as "adds to ."). Each must be written ``\\[``."""
    import re

    import click
    import typer

    from multistore.cli._app import app

    def walk(command: click.Command, path: str) -> list[str]:
        found = [f"{path}: {command.help}"] if command.help else []
        found += [f"{path} {p.name}: {p.help}" for p in command.params if getattr(p, "help", None)]
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                found += walk(sub, f"{path} {name}")
        return found

    texts = walk(typer.main.get_command(app), "multistore")
    bare = [t for t in texts if re.search(r"(?<!\\)\[[^\]]+\]", t.split(": ", 1)[1])]
    assert not bare, bare
