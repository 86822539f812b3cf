"""Visual report: per-image overlays (image, CAM heat map, label map, ground
truth, in the VOC palette) and a static ``index.html`` that shows them with
relative links, so the folder opens in a browser without a server.

Layout of a report folder::

    index.html
    panels/<name>.png   image | CAM heat map | label map | ground truth
                        (the panels given; maps blended over the image)
"""
from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from PIL import Image

from .palette import VOID, colorize
from .storage import ScoreMap, atomic_output, write_text_atomic

PANEL_ALPHA = 0.6  # weight of a map over the image


@dataclass
class ReportItem:
    """One image of the report. ``cam``: CAMs of the classes present (a
    ScoreMap) or an (H, W) map in [0, 1]; ``label`` and ``gt``: (H, W) uint8."""
    name: str
    image: np.ndarray
    cam: ScoreMap | np.ndarray | None = None
    label: np.ndarray | None = None
    gt: np.ndarray | None = None


def blend(image: np.ndarray, colour: np.ndarray, alpha: float = PANEL_ALPHA) -> np.ndarray:
    """(H, W, 3) uint8 image and colours -> their alpha blend, uint8."""
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * colour.astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def heatmap(values: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 'jet' colours."""
    rgba = colormaps["jet"](np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0))
    return (rgba[..., :3] * 255).astype(np.uint8)


def cam_strength(cam: ScoreMap | np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) float32: the largest CAM per pixel (0 where no class is present)."""
    data = cam.data if isinstance(cam, ScoreMap) else np.asarray(cam, dtype=np.float32)[None]
    if data.shape[1:] != shape:
        raise ValueError(f"CAM size {data.shape[1:]} != image size {shape}")
    return data.max(axis=0) if len(data) else np.zeros(shape, dtype=np.float32)


def panel(item: ReportItem) -> tuple[np.ndarray, list[str]]:
    """The item's panels side by side, (H, k*W, 3) uint8, and their titles."""
    image = np.asarray(item.image, dtype=np.uint8)
    shape = image.shape[:2]
    tiles, titles = [image], ["image"]
    if item.cam is not None:
        tiles.append(blend(image, heatmap(cam_strength(item.cam, shape))))
        titles.append("CAM")
    for title, label in (("label", item.label), ("ground truth", item.gt)):
        if label is not None:
            if label.shape != shape:
                raise ValueError(f"{item.name}: {title} size {label.shape} != image size {shape}")
            tiles.append(blend(image, colorize(label)))
            titles.append(title)
    return np.concatenate(tiles, axis=1), titles


def _classes(label: np.ndarray | None, class_names: Sequence[str]) -> str:
    if label is None:
        return ""
    present = [int(v) for v in np.unique(label) if v not in (0, VOID)]
    return ", ".join(class_names[v] if v < len(class_names) else str(v) for v in present)


def write_report(out_dir: str | os.PathLike, items: Iterable[ReportItem], class_names: Sequence[str],
                 *, title: str = "wsss-fast report", summary: Mapping[str, object] | None = None,
                 figures: Sequence[str | os.PathLike] = ()) -> Path:
    """Writes the panels and ``index.html`` under ``out_dir``; returns the page.

    Args:
        summary: key -> value lines shown at the top (e.g. mIoU).
        figures: image files (e.g. evaluation plots) copied into the report
            and shown above the table.
    """
    out_dir = Path(out_dir)
    rows = []
    for item in items:
        tiles, titles = panel(item)
        rel = f"panels/{item.name}.png"
        with atomic_output(out_dir / rel) as tmp:
            Image.fromarray(tiles).save(tmp, format="PNG")
        caption = []
        if item.gt is not None:
            caption.append(f"gt: {_classes(item.gt, class_names)}")
        if item.label is not None:
            caption.append(f"label: {_classes(item.label, class_names)}")
        rows.append(f"<tr><td class=name>{html.escape(item.name)}<br><small>"
                    f"{html.escape('; '.join(caption))}</small></td>"
                    f"<td><img src=\"{html.escape(rel)}\" title=\"{html.escape(' | '.join(titles))}\" "
                    f"loading=lazy></td></tr>")
    figure_tags = []
    for figure in figures:
        figure = Path(figure)
        rel = f"figures/{figure.name}"
        with atomic_output(out_dir / rel) as tmp:
            tmp.write_bytes(figure.read_bytes())
        figure_tags.append(f"<img src=\"{html.escape(rel)}\" class=figure>")
    summary_rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                           for k, v in (summary or {}).items())
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
td {{ vertical-align: top; padding: 4px; }} td.name {{ width: 14em; }}
img {{ image-rendering: pixelated; max-width: 100%; }} img.figure {{ width: 32em; margin-right: 1em; }}
table.summary th {{ text-align: left; padding-right: 1em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<table class=summary>{summary_rows}</table>
<div>{''.join(figure_tags)}</div>
<p>{len(rows)} images. Panels: image, then CAM heat map, label map and ground truth where given
(maps blended over the image in the VOC palette; void in light grey).</p>
<table>
{chr(10).join(rows)}
</table>
</body></html>
"""
    index = out_dir / "index.html"
    write_text_atomic(index, page)
    return index
