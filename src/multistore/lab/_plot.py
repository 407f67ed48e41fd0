"""The lab's picture: stale-read probability against time since the write, and the
latency distribution per operation. matplotlib is imported only when a plot is asked
for (with the Agg backend: no display needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from multistore.core._checkers import StalenessBucket
from multistore.core._history import Operation
from multistore.errors import UnsupportedError

__all__ = ["plot_report"]


def plot_report(
    path: str | Path,
    staleness: Sequence[StalenessBucket],
    operations: Sequence[Operation],
    *,
    title: str = "",
) -> Path:
    """Write a two-panel PNG to ``path`` and return it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise UnsupportedError(
            "--plot needs matplotlib: pip install matplotlib (or the 'lab' extra)"
        ) from exc

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    try:
        labels: list[str] = []
        probabilities: list[float] = []
        counts: list[int] = []
        for bucket in staleness:
            hi = "∞" if math.isinf(bucket.to_ms) else f"{bucket.to_ms:g}"
            labels.append(f"{bucket.from_ms:g}–{hi}")
            probabilities.append(bucket.p_stale or 0.0)
            counts.append(bucket.reads)
        bars = left.bar(range(len(labels)), probabilities, color="#c0504d")
        for bar, n in zip(bars, counts, strict=True):
            left.annotate(
                f"n={n}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
        left.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        left.set_ylim(0, 1.05)
        left.set_xlabel("time since the latest acknowledged write (ms)")
        left.set_ylabel("P(stale read)")
        left.set_title("Probabilistically bounded staleness")

        by_f: dict[str, list[float]] = {}
        for op in operations:
            if op.ok:
                by_f.setdefault(op.f, []).append((op.complete - op.invoke) / 1e6)
        names = sorted(by_f)
        if names:
            right.boxplot([by_f[f] for f in names], tick_labels=names, whis=(1, 99))
            right.set_yscale("log")
        right.set_ylabel("latency (ms, log scale)")
        right.set_title("Latency per operation (whiskers: p1–p99)")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, dpi=100)
    finally:
        plt.close(fig)
    return out
