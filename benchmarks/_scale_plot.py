"""``multistore bench scale --plot FILE``: the curves as a PNG, one panel per case,
time per operation against the number of items (both axes logarithmic), multistore
and the raw engine, with the peak RSS growth at the largest size in each title."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from multistore.errors import BenchmarkError


def require_plotting() -> None:
    """Fail before the run, not after it, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BenchmarkError(
            "--plot needs matplotlib, which is not installed here: "
            "pip install 'multistore[lab]' (or pip install matplotlib)"
        ) from None


def _mib(value: float) -> str:
    return f"{value / 2**20:.1f} MiB"


def draw(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, dict[str, Any]] = {}
    for row in rows:
        if "size" not in row or row["metric"] not in ("latency", "peak RSS growth"):
            continue
        curve = curves.setdefault(
            row["case"], {"title": row["name"].rsplit(", ", 1)[0], "points": {}, "memory": {}}
        )
        if row["metric"] == "latency":
            curve["points"][row["size"]] = (row["ours"], row["anchor"], row["anchor_name"])
        else:
            curve["memory"][row["size"]] = (row["ours"], row["anchor"])
    if not curves:
        raise BenchmarkError("no scale rows to plot")
    columns = 3
    lines = math.ceil(len(curves) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(5 * columns, 3.6 * lines), squeeze=False)
    for ax, curve in zip(axes.flat, curves.values(), strict=False):
        sizes = sorted(curve["points"])
        ours = [curve["points"][s][0] for s in sizes]
        raw = [curve["points"][s][1] for s in sizes]
        ax.plot(sizes, ours, "o-", color="#c0504d", label="multistore")
        ax.plot(sizes, raw, "s--", color="#4f81bd", label=curve["points"][sizes[-1]][2])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("items")
        ax.set_ylabel("µs per operation")
        top = sizes[-1]
        mem_ours, mem_raw = curve["memory"].get(top, (0, 0))
        ax.set_title(
            f"{curve['title']}\npeak RSS growth at {top:,}: {_mib(mem_ours)} / {_mib(mem_raw)}",
            fontsize=8,
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(curves) :]:
        ax.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
