"""Pseudo segmentation labels from CAM files (SPEC.md, "CAM" and "DRS").

Reads the CAM files of a split (``make-cam``, or the propagated maps of
``rw``) and optionally a folder of saliency maps (8-bit PNGs); writes one
label PNG per image (below).

Two rules, per pixel, on the maps of the classes of the image label (those a
CAM file holds; any other class counts as 0):

- Background threshold (PSA, SC-CAM, IRN; :func:`wsss_fast.eval.cam_to_label`):
  label = argmax over [threshold, CAM_1..CAM_C], background winning ties.
  References' values: 0.15 (SC-CAM, IRN), 0.2 (PSA); ``wsss-fast eval-cam``
  sweeps it.
- Saliency (DRS's pseudo_seg_label_gen.py): maps below ``alpha`` (0.2) are
  set to 0 (object cue); the saliency map (0-255) is binarised as
  ``value > 50``; background score = 1 - salient; label = argmax over
  [background, maps] (first maximum wins); pixels where more than two of
  these scores exceed 0.9 become 255, and so do salient pixels labelled
  background.

Labels are palette PNGs (:func:`wsss_fast.storage.save_label_png`), 255 =
ignore, readable by ``wsss-fast eval``.

:func:`evaluate_with_saliency` (``wsss-fast eval-cam --saliency``) scores
CAM files with the saliency rule as DRS scores its maps (scripts/test_cls.py,
test_refine.py): the argmax without the two ignore steps, which belong to
its pseudo labels (pseudo_seg_label_gen.py); it writes nothing.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import DataError, UsageError
from ..eval import cam_to_label, evaluate_labels, names_in
from ..palette import VOID
from ..parallel import ordered_map
from ..outputs import OutputFolder
from ..storage import ScoreMap, eight_bit, load_label_png, load_scores, save_label_png

THRESHOLD = 0.15           # background score without saliency (SC-CAM, IRN; PSA 0.2)
ALPHA = 0.2                # DRS: object cue
SALIENCY_THRESHOLD = 50    # DRS code: salient where the 0-255 map is > 50 (the paper: beta = 0.06)
CONFIDENT = 0.9            # DRS: a score above this is confident ...
MAX_CONFIDENT = 2          # ... and a pixel with more confident scores than this is ignored


def by_class(scores: ScoreMap) -> ScoreMap:
    """The channels in class order, so that ties go to the lowest class as in
    the references' argmax over all classes (make-cam writes them sorted)."""
    order = np.argsort(scores.keys, kind="stable")
    return ScoreMap(scores.keys[order], scores.data[order])


def saliency_labels(scores: ScoreMap, saliency: np.ndarray, *, alpha: float = ALPHA,
                    saliency_threshold: float = SALIENCY_THRESHOLD,
                    confident: float = CONFIDENT, ignore: bool = True) -> np.ndarray:
    """(H, W) uint8 labels by DRS's rule (module docstring).

    Args:
        scores: maps of the classes present (keys 1..C), (K, H, W).
        saliency: (H, W) saliency map, 0..255.
        ignore: apply the two 255 rules (pseudo labels); False gives the
            plain argmax DRS evaluates its maps with.
    """
    if saliency.shape != scores.data.shape[1:]:
        raise ValueError(f"saliency map is {saliency.shape[1]}x{saliency.shape[0]} but the CAMs are "
                         f"{scores.data.shape[2]}x{scores.data.shape[1]}")
    scores = by_class(scores)
    keys = np.concatenate([[0], scores.keys])
    maps = np.where(scores.data < alpha, 0.0, scores.data).astype(np.float32)
    salient = saliency > saliency_threshold
    stacked = np.concatenate([(~salient)[None].astype(np.float32), maps])
    label = keys[stacked.argmax(axis=0)].astype(np.uint8)
    if ignore:
        label[(stacked > confident).sum(axis=0) > MAX_CONFIDENT] = VOID
        label[salient & (label == 0)] = VOID
    return label


def load_saliency(path: str | os.PathLike) -> np.ndarray:
    """(H, W) uint8 saliency map of a PNG (grey levels 0..255; colour images
    are converted to grey, 16-bit ones scaled to 8 bits). Raises DataError
    naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing saliency map '{path.name}' in {path.parent}")
    try:
        with Image.open(path) as image:
            return np.array(eight_bit(image, path).convert("L"), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise DataError(f"unreadable saliency map '{path.name}' in {path.parent}: {exc}") from exc


def make_labels(cam_dir: str | os.PathLike, out_dir: str | os.PathLike, *, names: Sequence[str] | None = None,
                threshold: float = THRESHOLD, saliency_dir: str | os.PathLike | None = None,
                alpha: float = ALPHA, saliency_threshold: float = SALIENCY_THRESHOLD,
                confident: float = CONFIDENT, workers: int = 2, progress: bool = True) -> dict:
    """Writes ``<out_dir>/<name>.png`` for every name (default: every .npz of
    ``cam_dir``) that lacks one: by saliency when ``saliency_dir`` is given
    (``<saliency_dir>/<name>.png``), else by the background threshold.
    Under torchrun the pending names are split over the ranks (as in
    :func:`wsss_fast.stages.cam.make_cams`).

    Returns a dict with ``written`` (names), ``skipped`` and ``seconds``.
    """
    from tqdm import tqdm

    from ..distributed import barrier, shard

    if workers < 1:
        raise UsageError(f"workers must be >= 1, got {workers}")
    cam_dir, out_dir = Path(cam_dir), Path(out_dir)
    names = list(names) if names is not None else names_in(cam_dir, ".npz")
    if not names:
        raise UsageError("no images to label (the name list is empty)")
    rule = ({"rule": "threshold", "threshold": threshold} if saliency_dir is None else
            {"rule": "saliency", "alpha": alpha, "saliency_threshold": saliency_threshold,
             "confident": confident})
    inputs = {"cam": cam_dir} if saliency_dir is None else {"cam": cam_dir, "saliency": saliency_dir}

    def one(name: str) -> str:
        scores = by_class(load_scores(cam_dir / f"{name}.npz"))
        try:
            if saliency_dir is None:
                label = cam_to_label(scores, threshold)
            else:
                saliency = load_saliency(Path(saliency_dir) / f"{name}.png")
                label = saliency_labels(scores, saliency, alpha=alpha, saliency_threshold=saliency_threshold,
                                        confident=confident)
        except ValueError as exc:
            raise DataError(f"{name}: {exc}") from exc
        save_label_png(out_dir / f"{name}.png", label)
        return name

    with OutputFolder(out_dir, "make-labels", rule, inputs) as folder:
        pending = folder.pending(names, lambda name: [out_dir / f"{name}.png"])
        barrier()  # every rank has listed the pending names before anyone writes
        mine = shard(pending)
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            written = list(tqdm(ordered_map(pool, one, mine, ahead=2 * workers), total=len(mine),
                                desc="make-labels", unit="img", disable=not progress))
    return {"written": written, "skipped": len(names) - len(pending), "seconds": time.perf_counter() - start}


def evaluate_with_saliency(cam_dir: str | os.PathLike, saliency_dir: str | os.PathLike,
                           gt_dir: str | os.PathLike, num_classes: int, *, names: Sequence[str] | None = None,
                           alpha: float = ALPHA, saliency_threshold: float = SALIENCY_THRESHOLD,
                           device: str = "cpu", progress: bool = True) -> dict:
    """Scores ``<cam_dir>/<name>.npz`` labelled by the saliency rule without
    its ignore steps (DRS's scripts/test_cls.py) against
    ``<gt_dir>/<name>.png``; returns :meth:`wsss_fast.eval.ConfusionMatrix.scores`."""
    names = list(names) if names is not None else names_in(cam_dir, ".npz")

    def load(name: str):
        scores = by_class(load_scores(Path(cam_dir) / f"{name}.npz"))
        saliency = load_saliency(Path(saliency_dir) / f"{name}.png")
        label = saliency_labels(scores, saliency, alpha=alpha, saliency_threshold=saliency_threshold,
                                ignore=False)
        return label, load_label_png(Path(gt_dir) / f"{name}.png")

    return evaluate_labels(names, load, num_classes, device=device, progress=progress, desc="eval-cam")
