"""The lab's picture (``--plot``): a timeline of the operations per worker with the
fault windows shaded; P(consistent read) against time since the write, measured beside
the PBS model; and the latency distribution per operation.

matplotlib is imported only when a plot is asked for (with the Agg backend: no display
needed); :func:`require_matplotlib` says before a run whether it can be, and how to
install it into the running environment.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from multistore.core._history import EventType, Operation
from multistore.errors import UnsupportedError
from multistore.lab._pbs import PBSModel
from multistore.lab._report import FINAL_PROCESS

__all__ = ["install_hint", "plot_report", "require_matplotlib"]

_COLOURS = {
    "read": "#4f81bd",
    "write": "#9bbb59",
    "fail": "#f79646",
    "info": "#c0504d",
}
_FLOOR_MS = 0.01
"""Times since the write are drawn on a log axis; shorter ones are drawn here."""


def install_hint() -> str:
    """The command that installs matplotlib into the environment running multistore."""
    pip = Path(sys.executable).with_name("pip")
    if pip.exists():
        return f"{pip} install matplotlib"
    return f"{sys.executable} -m pip install matplotlib"


def require_matplotlib() -> None:
    """Raise :class:`UnsupportedError` (with the install command) unless matplotlib
    imports."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UnsupportedError(
            f"--plot needs matplotlib, which is not installed here; install it with: "
            f"{install_hint()}"
        ) from None


def _lane(op: Operation, workers: int) -> int:
    return workers if op.process >= FINAL_PROCESS else op.process % workers


def _timeline(ax: Any, report: Mapping[str, Any], operations: Sequence[Operation]) -> None:
    workers = int(report["config"]["concurrency"])
    spans_s: list[tuple[str, int, float, float]] = []
    for op in operations:
        if op.type is EventType.INFO:  # drawn until the client gave up on it
            end_ns = op.ended if op.ended is not None else op.invoke
        else:
            end_ns = op.complete
        kind = op.f if op.ok else op.type.value
        spans_s.append((kind, _lane(op, workers), op.invoke / 1e9, end_ns / 1e9))
    total = max((stop for *_, stop in spans_s), default=1.0) or 1.0
    gap, least = total / 1500, total / 1000  # back-to-back bars stay apart, short ones show
    bars: dict[str, dict[int, list[tuple[float, float]]]] = {k: {} for k in _COLOURS}
    for kind, lane, start, end in spans_s:
        width = end - start
        width = width - gap if width > 3 * gap else max(width, least)
        bars[kind].setdefault(lane, []).append((start, width))
    for kind, lanes in bars.items():
        for lane, spans in lanes.items():
            ax.broken_barh(spans, (lane - 0.35, 0.7), facecolors=_COLOURS[kind], linewidth=0)
    for window in report.get("fault_windows", []):
        ax.axvspan(window["from_s"], window["to_s"], color="#808080", alpha=0.18, linewidth=0)
        ax.text(
            window["from_s"],
            workers + 0.6,
            window["fault"],
            fontsize=7,
            va="bottom",
            ha="left",
            clip_on=True,
        )
    ax.set_yticks(range(workers + 1), [*(f"worker {i}" for i in range(workers)), "final"])
    ax.set_ylim(-0.7, workers + 1.3)
    ax.invert_yaxis()
    ax.set_xlabel("time since the workload started (s)")
    handles = [
        _patch(_COLOURS["read"], "read ok"),
        _patch(_COLOURS["write"], "write ok"),
        _patch(_COLOURS["fail"], "fail (did not happen)"),
        _patch(_COLOURS["info"], "info (may have happened)"),
        _patch("#808080", "fault in effect", alpha=0.3),
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    ax.set_title("Operations per worker (a worker's process changes after each info)")


def _patch(colour: str, label: str, alpha: float = 1.0) -> Any:
    from matplotlib.patches import Patch

    return Patch(facecolor=colour, alpha=alpha, label=label)


def _wilson(ok: int, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    z = 1.96
    p = ok / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _staleness(ax: Any, report: Mapping[str, Any], model: PBSModel | None) -> None:
    xs, ys, low, high = [], [], [], []
    for bucket in report["staleness"]:
        if not bucket["reads"] or bucket["mean_ms"] is None:
            continue
        n, stale = bucket["reads"], bucket["stale"]
        p = 1 - stale / n
        lo, hi = _wilson(n - stale, n)
        xs.append(max(bucket["mean_ms"], _FLOOR_MS))
        ys.append(p)
        low.append(max(0.0, p - lo))
        high.append(max(0.0, hi - p))
    if xs:
        ax.errorbar(xs, ys, yerr=[low, high], fmt="o", color="#c0504d", capsize=3, label="measured")
        shown = [b for b in report["staleness"] if b["reads"] and b["mean_ms"] is not None]
        for x, y, bucket in zip(xs, ys, shown, strict=True):
            ax.annotate(
                f"n={bucket['reads']}",
                (x, y),
                fontsize=6,
                xytext=(3, -10),
                textcoords="offset points",
            )
    latency_model = report.get("latency_model")
    if model is not None and latency_model is not None:
        curve = [(max(t, _FLOOR_MS), p) for t, p in latency_model["curve"]]
        ax.plot(
            [t for t, _ in curve],
            [p for _, p in curve],
            color="#4f81bd",
            label=f"PBS model ({latency_model['spec']} per leg)",
        )
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("time since the latest acknowledged write (ms, log scale)")
    ax.set_ylabel("P(consistent read)")
    ax.set_title("Probabilistically bounded staleness")
    ax.legend(loc="lower right", fontsize=8)


def _latencies(ax: Any, operations: Sequence[Operation]) -> None:
    by_f: dict[str, list[float]] = {}
    for op in operations:
        if op.ok and op.process < FINAL_PROCESS:
            by_f.setdefault(op.f, []).append(max((op.complete - op.invoke) / 1e6, 1e-3))
    names = sorted(by_f)
    if names:
        ax.boxplot([by_f[f] for f in names], tick_labels=names, whis=(1, 99))
        ax.set_yscale("log")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_title("Latency per operation (whiskers: p1-p99)")


def plot_report(
    path: str | Path,
    report: Mapping[str, Any],
    operations: Sequence[Operation],
    *,
    model: PBSModel | None = None,
    title: str = "",
) -> Path:
    """Write the three-panel PNG to ``path`` and return it."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(12, 8))
    try:
        grid = fig.add_gridspec(2, 2, height_ratios=(1.1, 1))
        _timeline(fig.add_subplot(grid[0, :]), report, operations)
        _staleness(fig.add_subplot(grid[1, 0]), report, model)
        _latencies(fig.add_subplot(grid[1, 1]), operations)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, dpi=100)
    finally:
        plt.close(fig)
    return out
