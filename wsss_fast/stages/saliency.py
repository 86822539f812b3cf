"""Saliency maps that are not ground truth (``wsss-fast make-saliency``) and
their quality (``wsss-fast eval-saliency``), for DRS's saliency background
without PoolNet's maps.

``make-saliency`` reads the images of a split; writes ``<out>/<name>.png``,
one 8-bit grey PNG per image at image resolution: OpenCV's classical static
saliency of the image, min-max normalised to 0..255 (rounded; a constant map
becomes 0 everywhere, nothing salient). That is the format DRS's rule reads
(:func:`wsss_fast.stages.labels.load_saliency`: salient where the value is
> 50), so ``make-labels --saliency`` and ``eval-cam --saliency`` take the
folder as they take PoolNet's maps. Images whose PNG exists and is whole are
skipped (resume); the rest are sharded over torchrun ranks and computed by
``workers`` threads (OpenCV and PIL release the GIL); the folder records the
method (:class:`wsss_fast.outputs.OutputFolder`).

``eval-saliency`` reads those PNGs (or any saliency maps in that format) and
the split's ground-truth masks and writes nothing itself (its command writes
the JSON): :class:`wsss_fast.eval.SaliencyMetrics` against the foreground of
the masks.

Methods (``cv2.saliency``, in OpenCV's contrib modules: the optional
dependency ``pip install opencv-contrib-python-headless``, imported only when
a map is made), both on the grey image (OpenCV's BGR -> grey weights):

- ``fine-grained`` (StaticSaliencyFineGrained; Montabone & Soto, 2010):
  centre-surround differences of intensity over several scales, at image
  resolution.
- ``spectral-residual`` (StaticSaliencySpectralResidual; Hou & Zhang, CVPR
  2007): the log-amplitude spectrum minus its local mean, back to the image
  domain, on a 64 x 64 copy of the image resized back to its size.

The default, ``fine-grained``, was chosen on the demo data's train split
(README, "Saliency maps without PoolNet") by the F-measure at the threshold
DRS's rule applies (> 50): 18.4% against 9.2% (max F: a tie at the trivial
all-salient map; spectral-residual has the better adaptive F and MAE, from
maps that are mostly dark).
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .labels import load_saliency
from .. import distributed
from ..cpu import available_cores
from ..data.voc import VOCRoot
from ..errors import DataError, MissingDependencyError, UsageError
from ..eval import evaluate_saliency
from ..outputs import OutputFolder
from ..parallel import ordered_map
from ..storage import atomic_output

# method name -> cv2.saliency factory
METHODS = {"fine-grained": "StaticSaliencyFineGrained_create",
           "spectral-residual": "StaticSaliencySpectralResidual_create"}
DEFAULT_METHOD = "fine-grained"  # F at > 50 on the demo data's train split (module docstring)
INSTALL_HINT = "pip install opencv-contrib-python-headless"


def opencv():
    """The cv2 module with its saliency module; MissingDependencyError (one
    line saying what to install) when OpenCV or its contrib modules are
    missing."""
    try:
        import cv2
    except ImportError as exc:
        raise MissingDependencyError(f"saliency maps need OpenCV with its contrib modules: {INSTALL_HINT} "
                                     f"(import error: {exc})") from None
    if not hasattr(cv2, "saliency"):
        raise MissingDependencyError(f"the installed OpenCV {getattr(cv2, '__version__', '')} has no contrib "
                                     f"saliency module: {INSTALL_HINT} (in place of opencv-python or "
                                     "opencv-python-headless, which clash with it)")
    return cv2


def check_method(method: str) -> None:
    if method not in METHODS:
        raise UsageError(f"method must be one of {', '.join(METHODS)}, got {method!r}")


def normalise(values: np.ndarray) -> np.ndarray:
    """(H, W) float map -> uint8 0..255, min-max (rounded); a constant or
    non-finite map -> zeros."""
    values = np.asarray(values, np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.uint8)
    values = np.where(finite, values, np.nanmin(np.where(finite, values, np.nan)))
    low, high = values.min(), values.max()
    if not high > low:
        return np.zeros(values.shape, np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)


def saliency_map(image: np.ndarray, method: str = DEFAULT_METHOD) -> np.ndarray:
    """(H, W) uint8 saliency of an (H, W, 3) uint8 RGB image, 0..255 (module
    docstring)."""
    check_method(method)
    cv2 = opencv()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    detector = getattr(cv2.saliency, METHODS[method])()  # one per call: the threads share none
    ok, values = detector.computeSaliency(np.ascontiguousarray(image[..., ::-1]))  # OpenCV wants BGR
    if not ok or values is None:
        raise ValueError(f"OpenCV's {method} saliency failed")
    values = np.asarray(values).reshape(image.shape[:2])
    return normalise(values)


def save_saliency(path: str | os.PathLike, saliency: np.ndarray) -> None:
    """Writes a (H, W) uint8 map as an 8-bit grey PNG, atomically."""
    saliency = np.asarray(saliency)
    if saliency.ndim != 2 or saliency.dtype != np.uint8:
        raise ValueError(f"save_saliency({path}): expected (H, W) uint8, got {saliency.shape} {saliency.dtype}")
    with atomic_output(path) as tmp:
        Image.fromarray(saliency, mode="L").save(tmp, format="PNG")


def make_saliency(voc: VOCRoot, names: Sequence[str], out_dir: str | os.PathLike, *,
                  method: str = DEFAULT_METHOD, workers: int | None = None, progress: bool = True) -> dict:
    """Writes ``out_dir/<name>.png`` for every image without one (module
    docstring).

    Args:
        voc: the dataset (images).
        names: image names.
        method: "fine-grained" or "spectral-residual".
        workers: threads (default: the cores this process may use).

    Returns:
        {"written": n, "skipped": n, "seconds": s} (seconds of the
        computation, without listing the folder).
    """
    from tqdm import tqdm

    check_method(method)
    if workers is not None and workers < 1:
        raise UsageError(f"workers must be >= 1, got {workers}")
    if not names:
        raise UsageError("no images (the split is empty)")
    opencv()  # a missing dependency stops before anything is written
    workers = workers or available_cores()
    out_dir = Path(out_dir)

    def one(name: str) -> str:
        try:
            saliency = saliency_map(voc.load_image(name), method)
        except ValueError as exc:
            raise DataError(f"{name}: {exc}") from exc
        save_saliency(out_dir / f"{name}.png", saliency)
        return name

    settings = {"method": method, "format": "uint8 grey PNG, min-max 0..255"}
    with OutputFolder(out_dir, "make-saliency", settings) as folder:
        pending = folder.pending(names, lambda name: [out_dir / f"{name}.png"])
        distributed.barrier()  # every rank has listed the pending images before anyone writes
        mine = distributed.shard(pending)
        voc.check_images(mine)
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in tqdm(ordered_map(pool, one, mine, ahead=2 * workers), total=len(mine),
                          desc=f"make-saliency ({method})", unit="img", disable=not progress):
                pass
    return {"written": len(mine), "skipped": len(names) - len(pending), "seconds": time.perf_counter() - start}


def evaluate_saliency_dir(voc: VOCRoot, names: Sequence[str], saliency_dir: str | os.PathLike, *,
                          progress: bool = True) -> dict:
    """Scores ``<saliency_dir>/<name>.png`` against the foreground of the
    masks of ``voc`` (:class:`wsss_fast.eval.SaliencyMetrics`); returns its
    scores. A map of another size than its mask is a DataError naming it."""
    saliency_dir = Path(saliency_dir)
    if not saliency_dir.is_dir():
        raise DataError(f"saliency folder {saliency_dir} is not a directory")
    if not voc.mask_dirs:
        raise DataError(f"{voc.root} has no ground-truth masks (SegmentationClass) to score saliency against")

    def load(name: str):
        return load_saliency(saliency_dir / f"{name}.png"), voc.load_mask(name)

    return evaluate_saliency(names, load, progress=progress)
