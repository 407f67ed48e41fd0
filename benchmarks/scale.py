"""``multistore bench scale``: what an operation costs as the data grows, multistore
against the raw engine, for each data model and for the consistency logs.

Each case (see ``_scale_stores.py`` and ``_scale_logs.py``) runs at each size in a
fresh process (``_scale_run.py``), so one case's caches and buffer pools do not
weigh on the next. Rows, per case:

- one ``latency`` row per size (median time per operation, both sides alternating);
- one ``peak RSS growth`` row per size (bytes; see ``_scale_run.py`` for how);
- one ``growth`` row: the time at the largest size over the time at the smallest,
  ours and raw (``speedup`` above 1: ours grows more slowly than the raw engine);
- for the logs with retention, one ``reap`` row per size: the time per row deleted,
  with the rows before and after in the name (and as ``rows_before``/``rows_after``).

``cases`` (``--cases kv-get,idem-claim``) picks some cases by id. ``sizes``
(``--sizes``) defaults to 1,000, 10,000 and 100,000 items: a few minutes on
two shared cores. ``--sizes 1000,100000,1000000`` gives the million-item points
(tens of minutes). ``plot`` (``--plot FILE``) draws the curves to a PNG.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._scale_cases import all_cases
from benchmarks._scale_types import Case
from multistore.errors import BenchmarkError

DEFAULT_SIZES = (1_000, 10_000, 100_000)
ROOT = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT = 3600.0


async def _measure(module: str, case_id: str, size: int, folder: Path) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        f"{Path(__file__).parent.name}._scale_run",
        module,
        case_id,
        str(size),
        str(folder),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CHILD_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BenchmarkError(f"scale case {case_id} at {size:,} ran over an hour") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    lines = out.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = err.decode().strip().splitlines()[-3:]
        raise BenchmarkError(f"scale case {case_id} at {size:,} failed: {' / '.join(tail)}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _row(case: Case, size: int | None, name: str, **values: Any) -> dict[str, Any]:
    row = {"name": name, "anchor_name": case.anchor_name, "case": case.id}
    row.update(values)
    if size is not None:
        row["size"] = size
    return row


def _ratio(anchor: float, ours: float) -> float:
    return round(anchor / ours, 3) if ours > 0 else float("inf")


def _rows(case: Case, results: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for size, r in results.items():
        label = f"{case.name}, {size:,} {case.items}"
        rows.append(
            _row(
                case,
                size,
                label,
                metric="latency",
                unit="us/op",
                ours=r["ours_us"],
                anchor=r["raw_us"],
                speedup=_ratio(r["raw_us"], r["ours_us"]),
            )
        )
        rows.append(
            _row(
                case,
                size,
                label,
                metric="peak RSS growth",
                unit="bytes",
                ours=r["ours_bytes"],
                anchor=r["raw_bytes"],
                speedup=_ratio(r["raw_bytes"], r["ours_bytes"]),
            )
        )
    if len(results) > 1:
        low, high = min(results), max(results)
        ours = results[high]["ours_us"] / results[low]["ours_us"]
        raw = results[high]["raw_us"] / results[low]["raw_us"]
        rows.append(
            _row(
                case,
                None,
                f"{case.name}: time at {high:,} / time at {low:,} {case.items}",
                metric="growth",
                unit="×",
                ours=round(ours, 3),
                anchor=round(raw, 3),
                speedup=_ratio(raw, ours),
            )
        )
    for size, r in results.items():
        if "rows_before" in r:
            rows.append(
                _row(
                    case,
                    size,
                    f"{case.name.split(':')[0]}: reap, {r['rows_before']:,} rows → "
                    f"{r['rows_after']:,}"
                    + (f" (FAILED: {r['reap_error']})" if "reap_error" in r else ""),
                    metric="reap",
                    unit="us/row",
                    anchor_name="sqlite3 DELETE of the same rows",
                    ours=r["reap_us_per_row"],
                    anchor=r["raw_reap_us_per_row"],
                    speedup=_ratio(r["raw_reap_us_per_row"], r["reap_us_per_row"]),
                    rows_before=r["rows_before"],
                    rows_after=r["rows_after"],
                )
            )
    return rows


def _sizes(sizes: Sequence[int] | None) -> list[int]:
    chosen = sorted(set(DEFAULT_SIZES if sizes is None else sizes))
    if not chosen or any(not isinstance(s, int) or s < 10 for s in chosen):
        raise BenchmarkError(f"scale sizes must be whole numbers of at least 10, not {sizes}")
    return chosen


def _cases(wanted: str | None) -> list[tuple[str, Case]]:
    every = all_cases()
    if wanted is None:
        return list(every.values())
    names = [name.strip() for name in wanted.split(",")]
    unknown = [name for name in names if name not in every]
    if unknown:
        raise BenchmarkError(
            f"no scale case {', '.join(unknown)}; the cases are {', '.join(every)}"
        )
    return [every[name] for name in names]


async def run(
    sizes: Sequence[int] | None = None, plot: Path | None = None, cases: str | None = None
) -> list[dict[str, Any]]:
    chosen = _sizes(sizes)
    picked = _cases(cases)
    if plot is not None:
        from benchmarks._scale_plot import require_plotting

        require_plotting()
    scratch = Path(tempfile.mkdtemp(prefix="msbench-scale-"))
    rows: list[dict[str, Any]] = []
    try:
        for module, case in picked:
            results = {}
            for size in chosen:
                folder = scratch / f"{case.id}-{size}"
                results[size] = await _measure(module, case.id, size, folder)
                # One line a point on stderr: a long run that stops keeps what it measured.
                print(f"scale {case.id} {size} {json.dumps(results[size])}", file=sys.stderr)
            rows.extend(_rows(case, results))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if plot is not None:
        from benchmarks._scale_plot import draw

        draw(rows, plot)
    return rows
