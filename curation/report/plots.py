"""The report's plots, drawn by matplotlib on an Agg canvas (no pyplot state) and embedded as base64 PNGs, so the
page needs no external resource."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from typing import Any

import numpy as np

from curation.report.collect import SIZE_BUCKETS, CheckStats, ReportError
from curation.report.embedding_map import EmbeddingMap

#: Colours of the embedding-map categories (checks in order of how many points they flag).
PALETTE = ("#d62728", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")
UNFLAGGED_COLOUR = "#c7c7c7"
SEVERAL_COLOUR = "#111111"


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ReportError(f"the report draws its plots with matplotlib, which is missing: {exc}") from exc

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")  # laid out in the one draw
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def histogram_png(check: CheckStats) -> str | None:
    """Base64 PNG of a check's score histogram (flagged bars stacked on the rest; the threshold dashed)."""
    if not check.hist_edges:
        return None
    fig = _figure(4.6, 2.7)
    ax = fig.add_subplot()
    edges = np.asarray(check.hist_edges)
    unflagged, flagged = np.asarray(check.hist_unflagged), np.asarray(check.hist_flagged)
    nonzero = np.concatenate([unflagged, flagged])
    nonzero = nonzero[nonzero > 0]
    log = bool(len(nonzero) and nonzero.max() / nonzero.min() > 50)  # one bin (often 0) would hide the others
    base = 0.7 if log else 0.0
    # one filled step outline per series (two patches, not 2 x BINS bars): the total in red, the unflagged
    # part over it in blue, which reads as flagged stacked on unflagged
    ax.stairs(np.maximum(unflagged + flagged, base), edges, fill=True, baseline=base, color="#d62728", label="flagged")
    ax.stairs(np.maximum(unflagged, base), edges, fill=True, baseline=base, color="#7f9fbf", label="not flagged")
    if log:
        ax.set_yscale("log")
        ax.set_ylim(bottom=base)
    if check.threshold is not None:
        side = ">=" if check.direction == "high" else "<="
        ax.axvline(
            check.threshold, color="#222", linestyle="--", linewidth=1.2, label=f"flag {side} {check.threshold:.3g}"
        )
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel("score")
    ax.set_ylabel("records")
    ax.set_title(check.name, fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    return _png(fig)


def cluster_sizes_png(sizes: Mapping[str, Mapping[str, int]]) -> str | None:
    """Base64 PNG: clusters per size bucket, one bar group per duplicate check."""
    if not sizes:
        return None
    labels = [label for label, _, _ in SIZE_BUCKETS if any(label in s for s in sizes.values())]
    fig = _figure(max(4.6, 0.7 * len(labels) * max(1, len(sizes)) ** 0.5 + 2), 2.9)
    ax = fig.add_subplot()
    width = 0.8 / len(sizes)
    for i, (check, counts) in enumerate(sizes.items()):
        xs = np.arange(len(labels)) + (i - (len(sizes) - 1) / 2) * width
        ax.bar(xs, [counts.get(label, 0) for label in labels], width=width, label=check, color=PALETTE[i % 8])
    ax.set_xticks(np.arange(len(labels)), labels)
    ax.set_xlabel("records in the cluster")
    ax.set_ylabel("clusters")
    ax.legend(fontsize=7, frameon=False)
    return _png(fig)


def embedding_png(emap: EmbeddingMap) -> str:
    """Base64 PNG of the 2-D map: unflagged points grey underneath, then one colour per flagging check."""
    fig = _figure(7.0, 5.2)
    ax = fig.add_subplot()
    counts: dict[str, int] = {}
    for category in emap.categories:
        counts[category] = counts.get(category, 0) + 1
    checks = sorted((c for c in counts if c not in ("not flagged", "several checks")), key=lambda c: -counts[c])
    colour = {c: PALETTE[i] for i, c in enumerate(checks[: len(PALETTE)])}
    cats = np.asarray(
        [c if c in colour or c in ("not flagged", "several checks") else "other check" for c in emap.categories]
    )
    order = ["not flagged", *colour, "other check", "several checks"]
    colours = {"not flagged": UNFLAGGED_COLOUR, "other check": "#bcbd22", "several checks": SEVERAL_COLOUR, **colour}
    size = 6 if len(cats) > 2000 else 14
    for category in order:
        mask = cats == category
        if mask.any():
            ax.scatter(
                emap.x[mask], emap.y[mask], s=size if category == "not flagged" else size * 1.6,
                c=colours[category], label=f"{category} ({int(mask.sum()):,})", alpha=0.8, linewidths=0,
            )  # fmt: skip
    ax.set_xlabel(f"PC 1 ({100 * emap.explained[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC 2 ({100 * emap.explained[1]:.1f}% of variance)")
    ax.legend(fontsize=7, frameon=False, loc="best", markerscale=1.5)
    return _png(fig)
