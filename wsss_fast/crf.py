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
- ``irn``: Gaussian sxy 3, compat 3; bilateral sxy 50, srgb 5, compat 10 (IRN's
  misc/imutils.py crf_inference_label, for its inter-pixel relation labels; it
  runs on a label map through :func:`label_probs`).

pydensecrf is single-threaded and takes about 1 s for a 500 x 375 image with
21 labels; :func:`dense_crf_batch` runs one image per process.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from .cpu import available_cores
from .errors import WsssFastError
from .parallel import ordered_map, worker_pool

PROB_FLOOR = 1e-5


class MissingDependencyError(WsssFastError):
    """An optional compiled dependency is not installed."""


@dataclass(frozen=True)
class CRFParams:
    """Mean-field iterations and the two pairwise kernels (pixels, RGB levels)."""
    iterations: int
    gaussian_sxy: float
    gaussian_compat: float
    bilateral_sxy: float
    bilateral_srgb: float
    bilateral_compat: float


PRESETS = {
    "psa": CRFParams(iterations=10, gaussian_sxy=3, gaussian_compat=3,
                     bilateral_sxy=80, bilateral_srgb=13, bilateral_compat=10),
    "deeplab": CRFParams(iterations=10, gaussian_sxy=1, gaussian_compat=3,
                         bilateral_sxy=67, bilateral_srgb=3, bilateral_compat=4),
    "irn": CRFParams(iterations=10, gaussian_sxy=3, gaussian_compat=3,
                     bilateral_sxy=50, bilateral_srgb=5, bilateral_compat=10),
}


def _densecrf():
    try:
        import pydensecrf.densecrf as densecrf
    except ImportError as exc:
        raise MissingDependencyError(
            "the dense CRF needs pydensecrf: `pip install pydensecrf2` (it imports as pydensecrf; "
            f"the original pydensecrf sdist no longer builds with Cython 3). Import error: {exc}"
        ) from exc
    return densecrf


def resolve_params(params: str | CRFParams) -> CRFParams:
    """A preset name ("psa", "deeplab") or a CRFParams -> CRFParams."""
    if isinstance(params, CRFParams):
        return params
    if params not in PRESETS:
        raise ValueError(f"unknown CRF preset {params!r}; presets: {sorted(PRESETS)}")
    return PRESETS[params]


def label_probs(labels: np.ndarray, n_labels: int, gt_prob: float = 0.7) -> np.ndarray:
    """The CRF input of a hard label map, as pydensecrf's
    ``unary_from_labels(labels, n_labels, gt_prob, zero_unsure=False)`` (IRN's
    crf_inference_label): probability ``gt_prob`` for each pixel's label and
    (1 - gt_prob) / (n_labels - 1) for the others, so that :func:`dense_crf`'s
    unary -log(probs) is that function's energy.

    Args:
        labels: (H, W) int labels in [0, n_labels).
        n_labels: number of labels, >= 2.
        gt_prob: confidence in the given label, in (0, 1).

    Returns:
        (n_labels, H, W) float32.
    """
    labels = np.asarray(labels)
    if n_labels < 2:
        raise ValueError(f"label_probs: n_labels must be >= 2, got {n_labels}")
    if not 0 < gt_prob < 1:
        raise ValueError(f"label_probs: gt_prob must be in (0, 1), got {gt_prob}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
        raise ValueError(f"label_probs: labels must be in [0, {n_labels}), got "
                         f"[{labels.min()}, {labels.max()}]")
    probs = np.full((n_labels, *labels.shape), (1 - gt_prob) / (n_labels - 1), np.float32)
    np.put_along_axis(probs, labels[None].astype(np.int64), gt_prob, axis=0)
    return probs


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
        workers: processes (default: every core this process may use,
            :func:`wsss_fast.cpu.available_cores`); 1 runs
            in this process.
        total: length of ``pairs`` for the progress bar, when it has no len().
    """
    params = resolve_params(params)
    _densecrf()  # fail here, not in a worker
    workers = workers or available_cores()
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
        pool = worker_pool(workers)  # its processes end with this one, even after kill -9
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
