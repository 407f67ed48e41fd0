"""``multistore bench NAME``: find ``benchmarks/NAME.py``, run it, check and print its rows."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import math
import re
import sys
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.markup import escape

from multistore.cli._human import quantity, table
from multistore.errors import BenchmarkError, MultistoreError

ROW_KEYS: Final = ("name", "metric", "unit", "ours", "anchor", "anchor_name", "speedup")
EXTRA_KEYS: Final = ("case", "size", "rows_before", "rows_after")
"""Kept when a row has them (``bench scale``: the curve, its size, a reap's rows)."""
_NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_]*$")


def _find_dir(directory: Path | None) -> Path:
    if directory is not None:
        if not directory.is_dir():
            raise BenchmarkError(f"benchmark folder {directory} does not exist")
        return directory.resolve()
    candidates = [Path.cwd() / "benchmarks"]
    # An editable install from a checkout: <repo>/src/multistore/cli/_bench.py
    candidates.append(Path(__file__).resolve().parents[3] / "benchmarks")
    for candidate in candidates:
        if (candidate / "_harness.py").is_file():
            return candidate
    raise BenchmarkError(
        "no benchmarks/ folder found; run from a checkout of multistore or pass --dir"
    )


def available(directory: Path) -> list[str]:
    return sorted(
        p.stem for p in directory.glob("*.py") if not p.stem.startswith("_") and "_" not in p.stem
    )


def _options(name: str, runner: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The options given (not None) that ``run()`` takes; one it does not take is an error."""
    given = {k: v for k, v in options.items() if v is not None}
    accepted = inspect.signature(runner).parameters
    for key in given:
        if key not in accepted:
            flag = "--" + key.replace("_", "-")
            raise BenchmarkError(f"benchmark {name} takes no {flag} option")
    return given


def run_benchmark(
    name: str,
    directory: Path | None,
    *,
    progress: bool,
    options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Import ``benchmarks.NAME`` and run its ``run()`` (with those of ``options`` that
    are given, e.g. ``sizes`` and ``plot`` for ``scale``); return validated rows."""
    folder = _find_dir(directory)
    if not _NAME_RE.match(name) or not (folder / f"{name}.py").is_file():
        names = ", ".join(available(folder)) or "none"
        raise BenchmarkError(f"no benchmark named {name!r}; available: {names}")
    root = str(folder.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        module = importlib.import_module(f"{folder.name}.{name}")
        runner = getattr(module, "run", None)
        if runner is None:
            raise BenchmarkError(f"benchmarks/{name}.py has no run() function")
        kwargs = _options(name, runner, options or {})
        if progress:
            console = Console(stderr=True)
            with console.status(
                f"running benchmark {name} (multistore and its baseline, in turn)…"
            ):
                rows = asyncio.run(runner(**kwargs))
        else:
            rows = asyncio.run(runner(**kwargs))
    except ModuleNotFoundError as exc:
        pip = f"{Path(sys.executable).as_posix()} -m pip install"
        raise BenchmarkError(
            f"benchmark {name} needs the module {exc.name}, which is not installed; the "
            f"benchmarks need the server drivers and their baselines: {pip} "
            "'multistore[all,bench]' (and the database servers: make test installs them)"
        ) from None
    except MultistoreError:
        raise
    except Exception as exc:  # the benchmark's own code failed: report it as the benchmark's
        raise BenchmarkError(f"benchmark {name} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(rows, list | tuple):
        raise BenchmarkError(f"benchmark {name}: run() returned {type(rows).__name__}, not rows")
    return [_check_row(name, row) for row in rows]


def _check_row(name: str, row: Any) -> dict[str, Any]:
    data = row.as_dict() if hasattr(row, "as_dict") else row
    if not isinstance(data, dict) or any(k not in data for k in ROW_KEYS):
        raise BenchmarkError(f"benchmark {name} returned a row without {', '.join(ROW_KEYS)}")
    for key in ("ours", "anchor", "speedup"):
        value = data[key]
        if not isinstance(value, int | float) or math.isnan(value):
            raise BenchmarkError(f"benchmark {name}: row {data['name']!r} has {key}={value!r}")
    return {k: data[k] for k in (*ROW_KEYS, *EXTRA_KEYS) if k in data}


def parse_sizes(text: str | None) -> list[int] | None:
    """``--sizes 1000,100000``: whole numbers, commas between, ``_`` allowed in them."""
    if text is None:
        return None
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise BenchmarkError(
            f"--sizes takes whole numbers separated by commas (1000,100000), not {text!r}"
        ) from None
    if any(size < 1 for size in sizes):
        raise BenchmarkError(f"--sizes must be positive, not {text!r}")
    return sizes


def print_rows(name: str, rows: list[dict[str, Any]]) -> None:
    shown = table("case", "metric", ">multistore", ">baseline", "baseline is", ">speedup")
    for row in rows:
        speed = row["speedup"]
        style = "green" if speed >= 1 else ("yellow" if speed >= 1 / 1.15 else "red")
        shown.add_row(
            escape(row["name"]),
            escape(row["metric"]),
            quantity(row["ours"], row["unit"]),
            quantity(row["anchor"], row["unit"]),
            escape(row["anchor_name"]),
            f"[{style}]{speed:.2f}×[/]",
        )
    console = Console()
    console.print(f"[bold]benchmark: {escape(name)}[/] (speedup above 1: multistore is better)")
    console.print(shown)
