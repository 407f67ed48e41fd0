"""What the README and docs show must run: every ```python block is executed as a
script in a fresh folder, and a docs example leaves nothing behind in it. A block
preceded by ``<!-- not-run: reason -->`` is skipped on purpose (e.g. it needs a server at
a fixed address); the reason is required."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- not-run: [^>]+ -->\s*\n)?```python\n(.*?)```", re.S)


def _blocks() -> list[tuple[str, str]]:
    found = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for number, match in enumerate(BLOCK.finditer(text), start=1):
            if match.group(1):
                continue
            found.append((f"{path.relative_to(REPO)}#{number}", match.group(2)))
    return found


BLOCKS = _blocks()


def test_docs_have_examples() -> None:
    assert len(BLOCKS) >= 7


@pytest.mark.parametrize(("where", "code"), BLOCKS, ids=[w for w, _ in BLOCKS])
def test_example_runs(where: str, code: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "MULTISTORE_CONFIG"}
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{where} failed:\n{result.stderr[-3000:]}"
    if where.startswith("docs"):
        # run in a user's working folder, a docs example leaves nothing behind there but
        # the embedded stores of the config's roles (.multistore/, as the app would)
        kept = {"example.py", ".multistore"}
        left = sorted(p.name for p in tmp_path.iterdir() if p.name not in kept)
        assert left == [], f"{where} left {left} in the working folder"


WORDING = re.compile(r"\bthe seed\b|\bseed's\b|\bthe issues?\b|\banchors?\b", re.I)
"""How the project was made (its seed document, its issues, its benchmark anchors) is
not what a user reads the docs for."""


def test_the_docs_speak_to_users() -> None:
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in sorted((REPO / "docs").rglob("*.md"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if WORDING.search(line)
    ]
    assert found == []
