"""What the command's tables show a person: durations, ages and URLs that wrap only
between their parts."""

from __future__ import annotations

import math

import pytest
from rich.console import Console
from rich.table import Table

from multistore.cli._human import URLText, age, duration, moment, quantity


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0 s"),
        (0.0004, "400 µs"),
        (0.0042, "4.2 ms"),
        (0.312, "312 ms"),
        (3.25, "3.2 s"),
        (4.0, "4 s"),
        (0.004, "4 ms"),
        (42.4, "42 s"),
        (125, "2 min 5 s"),
        (3600, "1 h"),
        (3725, "1 h 2 min"),
        (2 * 86400 + 3 * 3600 + 5, "2 d 3 h"),
        (math.inf, "never"),
        (None, "-"),
    ],
)
def test_duration_reads_as_a_person_says_it(seconds: float | None, shown: str) -> None:
    assert duration(seconds) == shown


@pytest.mark.parametrize(
    ("value", "unit", "shown"),
    [
        (35.21, "us/op", "35 µs/op"),
        (1520.0, "us/op", "1.5 ms/op"),
        (1171.4, "ops/s", "1,171 ops/s"),
        (2.5, "tx/s", "2.5 tx/s"),
        (123456, "bytes", "123 kB"),
    ],
)
def test_a_measured_value_reads_with_its_unit(value: float, unit: str, shown: str) -> None:
    assert quantity(value, unit) == shown


def test_age_and_moment() -> None:
    assert age(5.2) == "5 s ago"
    assert age(-20) == "in 20 s"
    assert age(0.1) == "0 s ago"
    assert age(3725) == "1 h 2 min ago"
    assert moment(1000.0, now=1090.0).endswith("(1 min 30 s ago)")
    assert moment(None) == "-"


URL = "postgresql://shop:***@db1.example.internal:5432/shop?pool_max=10&connect_timeout=3"


@pytest.mark.parametrize("width", [16, 24, 40, 60, 100])
def test_a_url_wraps_between_its_parts_never_inside_a_word(width: int) -> None:
    lines = list(URLText(URL).lines(width))
    assert "".join(lines) == URL
    pieces = URLText(URL).pieces
    for line in lines:
        # every line is whole pieces: it ends where a piece ends
        assert len(line) <= width or line in pieces
        assert any(URL.find(line) + len(line) == URL.find(p) + len(p) for p in pieces)


def test_a_url_cell_in_a_narrow_table() -> None:
    table = Table()
    table.add_column("role")
    table.add_column("store")
    table.add_row("profiles", URLText(URL))
    console = Console(width=40, record=True, color_system=None)
    console.print(table)
    text = console.export_text()
    assert all(len(line) <= 40 for line in text.splitlines())
    assert "db1.example.internal:" in text  # the host is never cut
    assert "connect_timeout=3" in text
