"""What a person reads in the command's tables: durations, ages, dates and URLs.

* :func:`duration` — ``0.4 ms``, ``12 ms``, ``1.3 s``, ``2 min 5 s``, ``3 h 2 min``,
  ``2 d 3 h``: two units at most, the precision a reader can use.
* :func:`age` — ``5 s ago`` or ``in 20 s``.
* :func:`moment` — a Unix time as a local date with its age,
  ``2025-06-01 12:03:04 (5 s ago)``.
* :class:`URLText` — a URL in a table cell that wraps after ``/``, ``?``, ``&``, ``,``
  or ``@`` when the cell is too narrow, never in the middle of a word;
  :func:`shown_url` — a store URL as one writes it in ``multistore.toml``.
* :func:`table` — a table that reads at 80 columns: no vertical rules, two spaces
  between columns, headers that never wrap.

``--json`` output keeps plain numbers (seconds, Unix times); these are for tables.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.style import StyleType
from rich.table import Table
from rich.text import Text

from multistore.urls import StoreURL

__all__ = ["URLText", "age", "duration", "moment", "quantity", "shown_url", "table"]

_UNITS: Final = (("d", 86400.0), ("h", 3600.0), ("min", 60.0))


def duration(seconds: float | None) -> str:
    """``seconds`` as a person says it; ``-`` for ``None``, ``never`` for infinity."""
    if seconds is None or math.isnan(seconds):
        return "-"
    if math.isinf(seconds):
        return "never" if seconds > 0 else "-∞"
    sign = "-" if seconds < 0 else ""
    left = abs(seconds)
    if left < 0.001:
        text = f"{left * 1e6:.0f} µs" if left >= 1e-6 or left == 0 else f"{left * 1e6:.2f} µs"
        return sign + ("0 s" if left == 0 else text)
    if left < 0.01:
        return f"{sign}{_tenths(left * 1000)} ms"
    if left < 1:
        return f"{sign}{left * 1000:.0f} ms"
    if left < 10:
        return f"{sign}{_tenths(left)} s"
    if left < 60:
        return f"{sign}{left:.0f} s"
    whole = round(left)
    for index, (unit, size) in enumerate(_UNITS):
        if whole >= size:
            big, rest = divmod(whole, int(size))
            if index + 1 < len(_UNITS):
                small_unit, small_size = _UNITS[index + 1]
            else:
                small_unit, small_size = "s", 1.0
            small = rest // int(small_size)
            return f"{sign}{big} {unit}" + (f" {small} {small_unit}" if small else "")
    return f"{sign}{whole} s"  # pragma: no cover - 60 s and more is caught above


def _tenths(value: float) -> str:
    """``3.2``, and ``4`` rather than ``4.0``."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


_TIME_UNITS: Final = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}


def quantity(value: float, unit: str) -> str:
    """A measured value with its unit, as a person reads it: a time per operation as a
    duration (``35 µs/op``), bytes in kB/MB, a rate with thousands separated
    (``1,171 ops/s``)."""
    head, slash, tail = unit.partition("/")
    if head in _TIME_UNITS:
        return duration(value * _TIME_UNITS[head]) + (f"/{tail}" if slash else "")
    if unit == "bytes":
        for name, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
            if abs(value) >= size:
                return f"{value / size:.3g} {name}"
        return f"{value:.0f} bytes"
    shown = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{shown} {unit}"


def age(seconds_ago: float) -> str:
    """``5 s ago`` for the past, ``in 20 s`` for the future: whole seconds under a
    minute (an age is read to the second), then two units."""
    left = abs(seconds_ago)
    shown = f"{left:.0f} s" if left < 59.5 else duration(left)
    return f"in {shown}" if seconds_ago < 0 and shown != "0 s" else f"{shown} ago"


def moment(unix_seconds: float | None, *, now: float | None = None) -> str:
    """A Unix time as a local date with its age, ``2025-06-01 12:03:04 (5 s ago)``."""
    if unix_seconds is None:
        return "-"
    stamp = datetime.fromtimestamp(unix_seconds).strftime("%Y-%m-%d %H:%M:%S")
    current = time.time() if now is None else now
    return f"{stamp} ({age(current - unix_seconds)})"


_PIECES: Final = re.compile(r".+?(?:[/?&,@]+|$)")


class URLText:
    """A URL (or path) as a table cell: at full length when it fits, else broken after
    its separators, one piece per line as far as they fit; a single piece longer than
    the cell is folded, which is the only case that cuts inside a word."""

    def __init__(self, text: str, style: StyleType = "") -> None:
        self.text = text
        self.style = style
        self.pieces = _PIECES.findall(text) or [text]

    def __str__(self) -> str:
        return self.text

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        widest = max(cell_len(piece) for piece in self.pieces)
        full = cell_len(self.text)
        return Measurement(min(widest, options.max_width), min(full, options.max_width))

    def lines(self, width: int) -> Iterator[str]:
        """The URL packed into lines of at most ``width`` cells."""
        line = ""
        for piece in self.pieces:
            if line and cell_len(line + piece) > width:
                yield line
                line = ""
            line += piece
        if line:
            yield line

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        text = Text("\n".join(self.lines(max(options.max_width, 1))), style=self.style)
        text.overflow = "fold"
        yield text


def shown_url(url: StoreURL, base: Path) -> str:
    """``url`` as written in a config beside ``base``: a file under ``base`` as a
    relative path (``sqlite:///.multistore/sessions.db``), the password hidden."""
    if url.is_file and url.path != ":memory:":
        try:
            relative = Path(url.path).relative_to(base)
        except ValueError:
            return url.render()
        return dataclasses.replace(url, database=str(relative)).render()
    return url.render()


def table(*columns: str, lines: bool = False, **options: Any) -> Table:
    """A table for reading at 80 columns: no vertical rules, two spaces between columns,
    a rule under the header, a blank line between rows with ``lines``; each header is
    at least as wide as its name, so it never breaks. A column named ``>name`` is right
    aligned (numbers)."""
    made = Table(
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        pad_edge=False,
        show_edge=False,
        show_lines=lines,
        title_justify="left",
        **options,
    )
    for column in columns:
        name = column.removeprefix(">")
        made.add_column(
            name, justify="right" if column.startswith(">") else "left", min_width=len(name)
        )
    return made
