"""Training curves of a run: ``curves.json`` (every step and evaluation) and ``curves.png`` (a quick look)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def write_curves(
    folder: Path,
    train_curve: Sequence[dict[str, float]],
    val_curve: Sequence[dict[str, float]],
    summary: dict[str, Any],
) -> None:
    """Write the per-step train loss, the per-evaluation validation loss and the run summary, plus a plot."""
    data = {"train": list(train_curve), "validation": list(val_curve), "summary": summary}
    (folder / "curves.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    plot_curves(folder / "curves.png", train_curve, val_curve, summary)


def plot_curves(
    path: Path,
    train_curve: Sequence[dict[str, float]],
    val_curve: Sequence[dict[str, float]],
    summary: dict[str, Any],
) -> None:
    # The object API with an explicit Agg canvas: no global backend switch, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot([p["step"] for p in train_curve], [p["loss"] for p in train_curve], label="train", lw=1)
    if val_curve:
        axes.plot([p["step"] for p in val_curve], [p["loss"] for p in val_curve], "o-", label="validation", lw=1.5)
    if summary.get("val_loss") is not None:
        axes.axvline(summary["best_step"], color="grey", ls="--", lw=1, label=f"best (step {summary['best_step']})")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss per assistant token")
    rate = summary.get("tokens_per_second")
    axes.set_title(f"LoRA training · {rate:.0f} real tokens/s" if rate else "LoRA training")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
