"""The examples in docs/replication/conflicts.md run, each on its own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "replication" / "conflicts.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.S | re.M)


def test_the_doc_has_examples() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_doc_example_runs(number: int) -> None:
    code = compile(BLOCKS[number], f"{DOC.name}[example {number + 1}]", "exec")
    exec(code, {"__name__": f"doc_example_{number + 1}"})
