"""Matplotlib figures of evaluation results, rendered off-screen (Agg) and
written atomically as PNG."""
from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .storage import atomic_output


def _save(fig: Figure, path: str | os.PathLike) -> None:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def plot_threshold_sweep(thresholds: Sequence[float], miou: Sequence[float],
                         path: str | os.PathLike, marks: Mapping[str, float] | None = None) -> None:
    """mIoU (%) against the background threshold, with vertical lines at
    ``marks`` (label -> threshold, e.g. the best and the references' values)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(thresholds, [100 * v for v in miou], marker=".", color="tab:blue")
    marks = marks or {}
    for i, (label, t) in enumerate(marks.items()):
        ax.axvline(t, linestyle="--", color=f"C{i + 1}", label=f"{label} ({t:g})")
    if marks:
        ax.legend(loc="lower right", fontsize="small")
    ax.set_xlabel("background threshold")
    ax.set_ylabel("mIoU (%)")
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_class_iou(class_names: Sequence[str], iou: Sequence[float], path: str | os.PathLike,
                   title: str = "") -> None:
    """Horizontal bars of per-class IoU (%); classes with no pixels are left empty."""
    fig = Figure(figsize=(6, 0.3 * len(class_names) + 1.2))
    ax = fig.add_subplot()
    values = [100 * v if math.isfinite(v) else 0.0 for v in iou]
    ax.barh(range(len(class_names)), values, color="tab:green")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU (%)")
    if title:
        ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)
