"""The install feedback of scripts/_venv.sh: pip's output shown as progress (which
package, how many), the whole of it kept in a log for when pip fails."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PIP_OUTPUT = """\
Obtaining file:///work/multistore
  Installing build dependencies: started
Collecting typer>=0.12 (from multistore==0.1.0)
  Downloading typer-0.29.3-py3-none-any.whl (45 kB)
Collecting duckdb>=1.1 (from multistore==0.1.0)
Requirement already satisfied: rich>=13 in ./.venv/lib/python3.11/site-packages (15.0.0)
Processing /opt/wheels/pygments-2.21.0-py3-none-any.whl (from rich>=13->multistore==0.1.0)
Installing collected packages: typer, duckdb, pygments, multistore
Successfully installed duckdb-1.2 multistore-0.1.0 pygments-2.21.0 typer-0.29.3
"""


def test_pip_progress_names_each_package_and_keeps_the_log(tmp_path: Path) -> None:
    log = tmp_path / "pip.log"
    result = subprocess.run(
        [str(REPO / "scripts" / "_pip_progress"), str(log)],
        input=PIP_OUTPUT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.splitlines() == [
        "    typer>=0.12",
        "    duckdb>=1.1",
        "    rich>=13",
        "    pygments",
        "    installing 4 packages…",
    ]
    assert log.read_text() == PIP_OUTPUT


def _fake_checkout(tmp_path: Path, pip_exit: int) -> Path:
    """A checkout whose .venv/bin/python plays pip: prints PIP_OUTPUT, exits pip_exit."""
    (tmp_path / "scripts").mkdir()
    for name in ("_venv.sh", "_pip_progress"):
        target = tmp_path / "scripts" / name
        target.write_text((REPO / "scripts" / name).read_text())
        target.chmod(0o755)
    (tmp_path / "pyproject.toml").write_text("")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/bin/sh\ncat <<'OUT'\n{PIP_OUTPUT}OUT\nexit {pip_exit}\n")
    python.chmod(0o755)
    return tmp_path


def _venv(checkout: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", '. scripts/_venv.sh ""'],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=False,
    )


def test_venv_says_what_it_installs_how_long_it_takes_and_shows_progress(
    tmp_path: Path,
) -> None:
    checkout = _fake_checkout(tmp_path, pip_exit=0)
    result = _venv(checkout)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "==> installing multistore into .venv (about 20 packages, 170 MB)"
    assert lines[1] == "    multistore and its embedded stores (tantivy, Ladybug, DuckDB)"
    assert lines[2] == (
        "    the first time this takes 1-3 minutes (downloads); later runs reuse .venv"
    )
    assert all(len(line) <= 80 for line in lines)
    assert "    duckdb>=1.1" in lines
    assert "    installing 4 packages…" in lines
    assert lines[-1].startswith("==> installed in ")
    assert (checkout / ".venv" / ".installed").exists()
    assert _venv(checkout).stdout == ""  # installed: nothing to do, nothing said


def test_venv_shows_pips_own_words_when_it_fails(tmp_path: Path) -> None:
    checkout = _fake_checkout(tmp_path, pip_exit=1)
    result = _venv(checkout)
    assert result.returncode == 1
    assert "Successfully installed" in result.stderr  # the log's tail
    assert "installing multistore failed (full log: .venv/pip.log)" in result.stderr
    assert not (checkout / ".venv" / ".installed").exists()
