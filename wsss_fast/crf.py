"""Dense CRF (Kraehenbuehl & Koltun) post-processing on pydensecrf2, for one
image or for many images over a process pool on every core.

The unary is -log(clip(probs, 1e-5, 1)) as in the reference code
(``pydensecrf.utils.unary_from_softmax``), so ``probs`` may be any map with
values in [0, 1] per class (softmax outputs, or PSA's [bg, CAMs] stack); the
output is the CRF's marginals, which sum to 1 over classes at each pixel.

Presets (SPEC.md, "Dense CRF"), both 10 mean-field iterations:

- ``psa``: Gaussian kernel sxy 3, compat 3; bilateral sxy 80, srgb 13, compat 10
  (AffinityNet's affinity labels).
- ``deeplab``: Gaussian sxy 1 (pos_xy), compat 3 (pos_w); bilateral sxy 67
  (bi_xy), srgb 3 (bi_rgb), compat 4 (bi_w) (DeepLab post-processing).

pydensecrf is single-threaded and takes about 1 s for a 500 x 375 image with
21 labels; :func:`dense_crf_batch` runs one image per process.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from .errors import WsssFastError
from .ops.dense_crf import PRESETS, CRFParams, resolve_params
from .parallel import ordered_map

PROB_FLOOR = 1e-5


class MissingDependencyError(WsssFastError):
    """An optional compiled dependency is not installed."""


def _densecrf():
    try:
        import pydensecrf.densecrf as densecrf
    except ImportError as exc:
        raise MissingDependencyError(
            "the dense CRF needs pydensecrf: `pip install pydensecrf2` (it imports as pydensecrf; "
            f"the original pydensecrf sdist no longer builds with Cython 3). Import error: {exc}"
        ) from exc
    return densecrf


def dense_crf(image: np.ndarray, probs: np.ndarray, params: str | CRFParams = "psa") -> np.ndarray:
    """Dense CRF of one image.

    Args:
        image: (H, W, 3) uint8 RGB.
        probs: (C, H, W) per-class scores in [0, 1] (clipped to [1e-5, 1]).
        params: preset name or CRFParams.

    Returns:
        (C, H, W) float32 marginals (sum to 1 over C at each pixel).
    """
    params = resolve_params(params)
    image = np.asarray(image)
    probs = np.asarray(probs, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"dense_crf: image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2] or probs.shape[0] < 1:
        raise ValueError(f"dense_crf: probs must be (C, H, W) with H, W = {image.shape[:2]}, "
                         f"got {probs.shape}")
    densecrf = _densecrf()
    c, h, w = probs.shape
    unary = -np.log(np.clip(probs, PROB_FLOOR, 1.0)).reshape(c, -1)
    crf = densecrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(np.ascontiguousarray(unary))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb,
                             rgbim=np.ascontiguousarray(image), compat=params.bilateral_compat)
    q = crf.inference(params.iterations)
    return np.asarray(q, dtype=np.float32).reshape(c, h, w)


def _job(task: tuple[np.ndarray, np.ndarray, CRFParams]) -> np.ndarray:
    return dense_crf(*task)


def imap_dense_crf(pairs: Iterable[tuple[np.ndarray, np.ndarray]], params: str | CRFParams = "psa",
                   *, workers: int | None = None, total: int | None = None,
                   progress: bool = True) -> Iterator[np.ndarray]:
    """Dense CRF of each (image, probs) pair, yielded in input order as soon as
    ready; ``pairs`` is consumed lazily, so it may load images on the fly.

    Args:
        workers: processes (default: every core, ``os.cpu_count()``); 1 runs
            in this process.
        total: length of ``pairs`` for the progress bar, when it has no len().
    """
    params = resolve_params(params)
    _densecrf()  # fail here, not in a worker
    workers = workers or os.cpu_count() or 1
    if total is None and hasattr(pairs, "__len__"):
        total = len(pairs)
    tasks = ((image, probs, params) for image, probs in pairs)
    bar = tqdm(total=total, desc="dense CRF", unit="img", disable=not progress)
    try:
        if workers == 1:
            for task in tasks:
                yield _job(task)
                bar.update()
            return
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context())
        try:
            for result in ordered_map(pool, _job, tasks, ahead=2 * workers):
                yield result
                bar.update()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()


def dense_crf_batch(images: Sequence[np.ndarray], probs: Sequence[np.ndarray],
                    params: str | CRFParams = "psa", *, workers: int | None = None,
                    progress: bool = True) -> list[np.ndarray]:
    """Dense CRF of many images on ``workers`` processes (default: all cores).

    Args:
        images: N arrays (H_i, W_i, 3) uint8.
        probs: N arrays (C_i, H_i, W_i) in [0, 1].

    Returns:
        N arrays (C_i, H_i, W_i) float32, in input order.
    """
    if len(images) != len(probs):
        raise ValueError(f"dense_crf_batch: {len(images)} images but {len(probs)} probability maps")
    return list(imap_dense_crf(list(zip(images, probs)), params, workers=workers, progress=progress))
