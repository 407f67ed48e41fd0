"""The demo's report as a person reads it on an 80-column terminal: nothing wider,
headers and URLs whole, explanations at full width, no unexplained jargon, and an
ending that says what each section showed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.cli import run_cli


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("demo80")
    result = run_cli("demo", cwd=folder, env={"COLUMNS": "80"}, timeout=180)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_nothing_is_wider_than_80_columns(report: str) -> None:
    wide = [line for line in report.splitlines() if len(line) > 80]
    assert wide == []


@pytest.mark.parametrize(
    "header",
    [
        ["role", "model", "store", "opened in"],
        ["role", "store", "asked", "answer"],
        ["request", "amount", "outcome", "answer", "charges"],
        ["order", "asks for", "saga state", "steps (in order)", "why"],
        ["step", "served by", "answer"],
        ["strategy", "both nodes keep", "lost", "conflicts", "converged"],
        ["measured", "value"],
    ],
)
def test_every_table_header_is_whole_on_one_line(report: str, header: list[str]) -> None:
    pattern = r"\s+".join(re.escape(name) for name in header)
    assert re.search(rf"^{pattern}\s*$", report, re.M), f"{header} not on one line"


def test_urls_are_whole(report: str) -> None:
    for name in ("sessions.db", "transactions.db", "metrics.duckdb", "catalog"):
        assert re.search(rf"\w+:///\.multistore/{re.escape(name)}\b", report), name


def test_explanations_use_the_full_width(report: str) -> None:
    lines = report.splitlines()
    note = next(i for i, line in enumerate(lines) if line.startswith("Each save writes"))
    assert len(lines[note]) > 70  # not squeezed into the width of a small table
    assert "skipped by" in " ".join(lines[note : note + 8])


def test_no_jargon_left_unexplained(report: str) -> None:
    assert "seed" not in report
    assert "it may still surface" not in report
    # a router setting is named only with what it does
    for match in re.finditer(r"readmit_after", report):
        before = report[max(0, match.start() - 200) : match.start()]
        assert "rejoins the read rotation" in " ".join(before.split())


def test_the_profiles_role_answers_a_question_about_users(report: str) -> None:
    assert "catalog query" not in report
    assert re.search(r"^profiles\s+document\s+premium users in Germany", report, re.M)
    assert "Carol (Munich): 27 orders" in report


def test_the_quorum_section_calls_the_surfacing_write_expected(report: str) -> None:
    quorum = report.split("quorum replication: N=5 nodes")[1]
    flat = " ".join(quorum.split())
    assert "The error is indeterminate" in flat
    assert (
        "the failed write's value surfaced: the outcome its indeterminate error allowed, expected"
        in flat
    )


def test_the_ending_says_what_each_section_showed(report: str) -> None:
    ending = report.split("what the demo showed")[1]
    assert "all passed" not in report
    rules = re.findall(r"^─+ (.+?) ─+$", report.split("what the demo showed")[0], re.M)
    sections = [rule.split(":")[0] for rule in rules]
    assert len(sections) == 9 and sections[0] == "configuration"
    for section in sections:
        assert re.search(rf"^✓\s+{re.escape(section)}\s+\S", ending, re.M), section
    flat = " ".join(ending.split())
    assert "stale reads of the quorum section are what R+W<=N allows" in flat


def test_json_carries_what_each_section_proved(tmp_path: Path) -> None:
    result = run_cli("demo", "--json", cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr
    sections = json.loads(result.stdout)["sections"]
    assert all(s["proved"] and "[" not in s["proved"] for s in sections)
