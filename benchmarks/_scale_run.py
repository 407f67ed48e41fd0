"""One case of ``multistore bench scale`` at one size, in a process of its own.

``python -m benchmarks._scale_run MODULE CASE SIZE FOLDER`` loads the data of both sides
(multistore, then the raw engine, each into its own files under FOLDER), times the
operation of each side in alternating rounds (:func:`benchmarks._harness.compare`)
and prints one JSON object on its last line of output.

Memory is the growth of the process's **peak resident set size** (Linux ``VmHWM``)
while one side opens its store, loads its data and runs its operation: before each
side the allocator gives back what it can (``malloc_trim``) and the peak is reset to
the current size (``/proc/self/clear_refs``), so each side is measured from the same
floor. It is peak RSS, not tracemalloc: it counts what the engines allocate in C
(page caches, buffer pools, index writers), which tracemalloc cannot see. Growth under
one page is shown as one page (4096 bytes).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import inspect
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._harness import compare
from benchmarks._scale_cases import load
from benchmarks._scale_types import Prepared

PAGE = 4096


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _floor() -> int:
    """Give freed memory back, reset the peak to now; the resident bytes now."""
    gc.collect()
    libc = ctypes.util.find_library("c")
    if libc:
        trim = getattr(ctypes.CDLL(libc), "malloc_trim", None)
        if trim is not None:
            trim(0)
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return _status_kib("VmRSS") * 1024


def _peak_growth(floor: int) -> int:
    return max(_status_kib("VmHWM") * 1024 - floor, PAGE)


async def _run(side: Prepared) -> None:
    result = side.call()
    if inspect.isawaitable(result):
        await result


async def _side(prepare: Any, size: int, folder: Path) -> tuple[Prepared, int, float]:
    """Load one side and warm it up (up to 20 runs or half a second, which count in its
    memory); its peak RSS growth and the time one run took."""
    floor = _floor()
    side: Prepared = await prepare(size, folder)
    runs, start = 0, time.perf_counter()
    while runs < 20 and (runs < 2 or time.perf_counter() - start < 0.5):
        await _run(side)
        runs += 1
    return side, _peak_growth(floor), (time.perf_counter() - start) / runs


def _timing(seconds_per_op: float) -> dict[str, int]:
    """Rounds of about 40 ms each side (many runs of a fast operation, one of a slow):
    nine of them, or three when one run takes over 50 ms."""
    ops = max(1, min(400, int(0.04 / max(seconds_per_op, 1e-6))))
    return {"ops": ops, "rounds": 9 if seconds_per_op < 0.05 else 3, "warmup": min(ops, 5)}


async def measure(module: str, name: str, size: int, folder: Path) -> dict[str, Any]:
    case = load(module)[name]
    ours, ours_bytes, ours_s = await _side(case.ours, size, folder)
    raw, raw_bytes, raw_s = await _side(case.raw, size, folder)
    try:
        timing = _timing(max(ours_s, raw_s))
        row = await compare(case.name, ours.call, raw.call, case.anchor_name, **timing)
        extra: dict[str, Any] = {}
        if case.reap is not None:
            extra = await case.reap(ours, raw)
    finally:
        await ours.close()
        await raw.close()
    return {
        "ours_us": row.ours,
        "raw_us": row.anchor,
        "ours_bytes": ours_bytes,
        "raw_bytes": raw_bytes,
        **extra,
    }


def main() -> None:
    module, name, size, folder = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    folder.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(measure(module, name, size, folder))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
