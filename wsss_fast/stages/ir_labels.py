"""IRN's inter-pixel relation labels (``wsss-fast make-ir-labels``; SPEC.md,
"AffinityNet and random walk", IRN variant; jiwoon-ahn/irn
step/cam_to_ir_label.py).

Reads the CAM files of a split (``make-cam``: object classes, image
resolution, max-normalised) and the images; writes ``<out>/<name>.png``, one
uint8 label map per image at image resolution (VOC palette, readable by
``wsss-fast eval``): 0 confident background, 1..C confident foreground, 255
unsure. ``train-irn`` reads them back.

Per image, as IRN:

1. confident foreground: label = argmax over [fg threshold (0.30), CAMs],
   refined by a dense CRF on that hard label map (:func:`wsss_fast.crf.label_probs`
   with gt_prob 0.7, preset ``irn``: Gaussian sxy 3 compat 3, bilateral sxy 50
   srgb 5 compat 10, 10 iterations; IRN's misc/imutils.py crf_inference_label);
2. confident background: the same with the bg threshold (0.05);
3. label = the foreground result, 255 where it says background, 0 where both
   say background.

The two CRFs of an image run on a process pool; images whose PNG exists and
is whole are skipped (resume), the rest are sharded over torchrun ranks; the
folder records its settings and CAM folder (:class:`wsss_fast.outputs.OutputFolder`).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .affinity_labels import crfs_per_image, pending_share
from ..crf import label_probs
from ..data.voc import VOCRoot
from ..errors import UsageError
from ..outputs import OutputFolder
from ..palette import VOID
from ..storage import ScoreMap, save_label_png

THRESHOLDS = (0.30, 0.05)  # IRN's run_sample.py conf_fg_thres, conf_bg_thres
GT_PROB = 0.7              # IRN's crf_inference_label


def threshold_labels(cams: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W) int64 channel index of argmax over [threshold, CAMs]: 0 where no
    CAM exceeds the threshold, k + 1 for CAM channel k. cams: (K, H, W)."""
    stacked = np.concatenate([np.full((1, *cams.shape[1:]), threshold, np.float32), cams])
    return stacked.argmax(0)


def crf_inputs(cams: ScoreMap, thresholds: tuple[float, float] = THRESHOLDS) -> list[np.ndarray]:
    """The two CRF inputs of an image, (K + 1, H, W) each: the hard labels at
    the fg and the bg threshold as :func:`~wsss_fast.crf.label_probs` (with no
    class, a single all-background channel)."""
    data = np.clip(cams.data, 0, 1)
    n = len(cams.keys) + 1
    if n == 1:
        return [np.ones((1, *data.shape[1:]), np.float32)] * 2
    return [label_probs(threshold_labels(data, t), n, GT_PROB) for t in thresholds]


def combine(keys: np.ndarray, fg_marginals: np.ndarray, bg_marginals: np.ndarray) -> np.ndarray:
    """IRN's label from the two CRF results: (H, W) uint8, the class of the
    fg-threshold CRF, 255 where it is background, 0 where the bg-threshold
    CRF is background too. keys: (K + 1,) labels of the channels, 0 first."""
    fg = keys[fg_marginals.argmax(0)]
    bg = keys[bg_marginals.argmax(0)]
    label = np.where(fg == 0, VOID, fg)
    label[(fg == 0) & (bg == 0)] = 0
    return label.astype(np.uint8)


def make_ir_labels(voc: VOCRoot, names: Sequence[str], cam_dir: str | os.PathLike,
                   out_dir: str | os.PathLike, *, thresholds: tuple[float, float] = THRESHOLDS,
                   crf: str = "irn", workers: int | None = None, crf_backend: str = "auto",
                   device: str | None = None, progress: bool = True) -> dict:
    """Writes ``out_dir/<name>.png`` for every image without one (see the
    module docstring).

    Args:
        voc: the dataset (images).
        names: image names.
        cam_dir: CAM files ``<name>.npz``.
        thresholds: (fg, bg) CAM thresholds, 0 <= bg < fg (IRN: 0.30, 0.05).
        crf: CRF preset of :mod:`wsss_fast.crf` (IRN: "irn").
        workers: processes of the pydensecrf CRF backend (default: every core).
        crf_backend: "auto", "wsss" or "pydensecrf" (:mod:`wsss_fast.crf`).
        device: device of the wsss backend (default: CUDA if available).

    Returns:
        {"written": n, "skipped": n, "seconds": s}.
    """
    fg, bg = thresholds
    if not 0 <= bg < fg:
        raise UsageError(f"IR labels need 0 <= bg threshold < fg threshold, got fg {fg} and bg {bg}")
    cam_dir, out_dir = Path(cam_dir), Path(out_dir)
    settings = {"thresholds": [fg, bg], "crf": crf, "gt_prob": GT_PROB}
    with OutputFolder(out_dir, "make-ir-labels", settings, {"cam": cam_dir}) as folder:
        todo, skipped = pending_share(folder, names, lambda name: [out_dir / f"{name}.png"])
        start = time.perf_counter()
        for name, keys, (fg_q, bg_q) in crfs_per_image(
                voc, todo, cam_dir, lambda cams: crf_inputs(cams, (fg, bg)), 2, crf, crf_backend=crf_backend,
                device=device, workers=workers, progress=progress):
            save_label_png(out_dir / f"{name}.png", combine(keys, fg_q, bg_q))
    return {"written": len(todo), "skipped": skipped, "seconds": time.perf_counter() - start}
