"""The command line itself, as a newcomer meets it: ``--version``, ``-h``, a bare
``multistore`` that helps, help texts that reflow to the terminal, no value shown
for a flag, and one line with exit code 2 for a usage error."""

from __future__ import annotations

import json
import re
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from multistore import ErrorCode
from tests.cli import run_cli


def _commands() -> list[tuple[str, ...]]:
    """Every command and group of the app, so a command added later is checked too."""
    import typer

    from multistore.cli import app

    found: list[tuple[str, ...]] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        found.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return found


COMMANDS = _commands()


def test_version(tmp_path: Path) -> None:
    for flag in ("--version", "-V"):
        result = run_cli(flag, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"multistore {version('multistore')}"


@pytest.mark.parametrize("group", [(), ("lab",), ("quorum",)])
def test_a_bare_group_prints_its_help_and_exits_0(tmp_path: Path, group: tuple[str, ...]) -> None:
    result = run_cli(*group, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Usage: multistore" in result.stdout
    assert "Commands" in result.stdout


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "multistore")
def test_every_help_has_h_reflows_and_shows_no_bool(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    narrow = run_cli(*command, "-h", cwd=tmp_path, env={"COLUMNS": "80"})
    assert narrow.returncode == 0, narrow.stderr
    assert narrow.stdout == run_cli(*command, "--help", cwd=tmp_path, env={"COLUMNS": "80"}).stdout
    assert "<bool>" not in narrow.stdout
    # how the project was made (its seed document, its anchors) is not the user's business
    assert not re.search(r"the seed\b|seed's|anchor", narrow.stdout, re.I), narrow.stdout
    assert all(len(line) <= 80 for line in narrow.stdout.splitlines()), narrow.stdout


def test_help_texts_reflow_instead_of_keeping_the_source_line_breaks(tmp_path: Path) -> None:
    wide = run_cli("--help", cwd=tmp_path, env={"COLUMNS": "160"}).stdout
    # the demo's docstring breaks its line after "stores"; the help must not
    assert "configured stores (embedded by default)" in wide
    recover = run_cli("recover", "--help", cwd=tmp_path, env={"COLUMNS": "160"}).stdout
    assert "[participants]" in recover  # square brackets are text, not markup


def test_lab_options_are_spelled_as_users_expect(tmp_path: Path) -> None:
    text = run_cli("lab", "quorum", "--help", cwd=tmp_path, env={"COLUMNS": "120"}).stdout
    for long, short in (("--replicas", "-n"), ("--read", "-r"), ("--write", "-w")):
        assert long in text and short in text
    assert "--n " not in text and "--r " not in text
    # the earlier spelling still works
    run = run_cli(
        "lab", "quorum", "--r", "one", "--w", "one", "--n", "3", "--ops", "20",
        "--duration", "0.2", "--json", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode in (0, 80), run.stderr
    config = json.loads(run.stdout)["config"]
    assert (config["n"], config["r"], config["w"]) == (3, 1, 1)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("stauts",), "Did you mean 'status'?"),
        (("status", "--jsno"), "did you mean --json?"),
        (("bench",), "Missing argument"),
        (("lab", "quorum", "--ops", "many"), "Invalid value for '--ops'"),
    ],
)
def test_a_usage_error_is_one_line_with_exit_code_2(
    tmp_path: Path, args: tuple[str, ...], fragment: str
) -> None:
    result = run_cli(*args, cwd=tmp_path, env={"COLUMNS": "80"})
    assert result.returncode == int(ErrorCode.COMMAND_LINE) == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error[command-line]: ")
    assert fragment in lines[0]
    assert "--help" in lines[0]
    assert result.stdout == ""


def test_a_folder_given_as_the_config_is_one_line(tmp_path: Path) -> None:
    result = run_cli("status", "-c", str(tmp_path), cwd=tmp_path)
    assert result.returncode == int(ErrorCode.CONFIG)
    assert result.stderr.strip() == (
        f"error[config]: config file {tmp_path} is a folder, not a file; "
        "give the path of a multistore.toml"
    )
    (tmp_path / "multistore.toml").write_text("")
    result = run_cli("status", "-c", str(tmp_path), cwd=tmp_path)
    assert f"did you mean {tmp_path / 'multistore.toml'}?" in result.stderr
