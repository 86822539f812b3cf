"""Dense CRF (Kraehenbuehl & Koltun) post-processing of one image or of a
stream of images, on either of two backends that compute the same function
(pydensecrf's model and mean field; ours matches it to about 1e-5):

- ``wsss``: our operator :func:`wsss_fast.ops.dense_crf` in this process (C++
  kernel on every core, or CUDA); consecutive images of one size run as one
  batch, their label counts padded (``num_labels``).
- ``pydensecrf``: pydensecrf2 (optional: ``pip install "wsss-fast[crf]"``), one
  image per process of a pool on ``workers`` processes.
- ``auto`` (the default): ``wsss`` wherever its compiled kernel exists for the
  device (on CUDA; and on CPU, where it measured faster than the pydensecrf
  pool on the same cores: benchmarks/results/crf-cpu.json); otherwise
  pydensecrf when it is installed; otherwise ``wsss`` on its PyTorch reference
  (slow; a :class:`~wsss_fast.BackendWarning` says so).

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
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from . import _backend
from .cpu import available_cores
from .distributed import local_device
from .errors import MissingDependencyError
from .ops.dense_crf import PRESETS, CRFParams, resolve_params
from .parallel import ordered_map, worker_pool

__all__ = ["BACKENDS", "PRESETS", "CRFParams", "MissingDependencyError", "crf_device",
           "dense_crf", "dense_crf_batch", "imap_dense_crf", "label_probs", "resolve_backend",
           "resolve_params"]

PROB_FLOOR = 1e-5
BACKENDS = ("auto", "wsss", "pydensecrf")


def _densecrf():
    try:
        import pydensecrf.densecrf as densecrf
    except ImportError as exc:
        raise MissingDependencyError(
            "the pydensecrf CRF backend needs pydensecrf: `pip install pydensecrf2` (it imports as "
            "pydensecrf; the original pydensecrf sdist no longer builds with Cython 3), or use "
            f"--crf-backend wsss. Import error: {exc}"
        ) from exc
    return densecrf


def _has_pydensecrf() -> bool:
    try:
        _densecrf()
    except MissingDependencyError:
        return False
    return True


def crf_device(device: str | torch.device | None = None) -> torch.device:
    """The device of the wsss backend: ``device`` ("cuda" under torchrun being
    the process's GPU), or by default CUDA when a GPU and the CUDA kernel are
    there, else the CPU."""
    if device is not None:
        return local_device(device)
    if torch.cuda.is_available() and _backend.has_kernel("dense_crf", "cuda"):
        return torch.device("cuda")
    return torch.device("cpu")


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


def resolve_backend(backend: str, device: str | torch.device | None = None) -> str:
    """"wsss" or "pydensecrf" for a backend name (see the module docstring
    for what "auto" picks on ``device``)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown CRF backend {backend!r}; backends: {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if _backend.has_kernel("dense_crf", crf_device(device).type) or not _has_pydensecrf():
        return "wsss"
    return "pydensecrf"


def _check_pair(image, probs) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    probs = np.asarray(probs, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"dense_crf: image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2] or probs.shape[0] < 1:
        raise ValueError(f"dense_crf: probs must be (C, H, W) with H, W = {image.shape[:2]}, "
                         f"got {probs.shape}")
    return image, probs


def _pydensecrf(image: np.ndarray, probs: np.ndarray, params: CRFParams) -> np.ndarray:
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
    return _pydensecrf(*_check_pair(task[0], task[1]), task[2])


def _wsss_batch(pairs: list[tuple[np.ndarray, np.ndarray]], params: CRFParams,
                device: torch.device) -> list[np.ndarray]:
    """One ops.dense_crf call for same-size pairs, labels padded to the most."""
    from .ops import dense_crf as op

    counts = [p.shape[0] for _, p in pairs]
    h, w = pairs[0][0].shape[:2]
    probs = np.zeros((len(pairs), max(counts), h, w), dtype=np.float32)
    for b, (_, p) in enumerate(pairs):
        probs[b, :counts[b]] = np.clip(p, 0.0, 1.0)
    images = torch.from_numpy(np.stack([im for im, _ in pairs])).permute(0, 3, 1, 2)
    num_labels = None if len(set(counts)) == 1 else torch.tensor(counts, device=device)
    with torch.no_grad():
        q = op(images.to(device), torch.from_numpy(probs).to(device), params, num_labels).cpu()
    return [q[b, :counts[b]].numpy() for b in range(len(pairs))]


def _imap_wsss(pairs: Iterable[tuple[np.ndarray, np.ndarray]], params: CRFParams,
               device: torch.device, batch_size: int) -> Iterator[np.ndarray]:
    group: list[tuple[np.ndarray, np.ndarray]] = []
    for pair in pairs:
        pair = _check_pair(*pair)
        if group and (len(group) == batch_size or group[0][0].shape != pair[0].shape):
            yield from _wsss_batch(group, params, device)
            group = []
        group.append(pair)
    if group:
        yield from _wsss_batch(group, params, device)


def dense_crf(image: np.ndarray, probs: np.ndarray, params: str | CRFParams = "psa", *,
              backend: str = "auto", device: str | torch.device | None = None) -> np.ndarray:
    """Dense CRF of one image.

    Args:
        image: (H, W, 3) uint8 RGB.
        probs: (C, H, W) per-class scores in [0, 1] (clipped to [1e-5, 1]).
        params: preset name or CRFParams.
        backend: "auto", "wsss" or "pydensecrf" (module docstring).
        device: the wsss backend's device (default: :func:`crf_device`).

    Returns:
        (C, H, W) float32 marginals (sum to 1 over C at each pixel).
    """
    params = resolve_params(params)
    image, probs = _check_pair(image, probs)
    if resolve_backend(backend, device) == "pydensecrf":
        return _pydensecrf(image, probs, params)
    return _wsss_batch([(image, probs)], params, crf_device(device))[0]


def imap_dense_crf(pairs: Iterable[tuple[np.ndarray, np.ndarray]], params: str | CRFParams = "psa",
                   *, backend: str = "auto", device: str | torch.device | None = None,
                   workers: int | None = None, batch_size: int | None = None,
                   total: int | None = None, progress: bool = True) -> Iterator[np.ndarray]:
    """Dense CRF of each (image, probs) pair, yielded in input order as soon as
    ready; ``pairs`` is consumed lazily, so it may load images on the fly.

    Args:
        backend, device: as for :func:`dense_crf`.
        workers: processes of the pydensecrf backend (default: every core this
            process may use, :func:`wsss_fast.cpu.available_cores`; 1 runs in
            this process). The wsss backend runs
            in this process on torch's threads (``torch.set_num_threads``).
        batch_size: consecutive same-size pairs per call of the wsss backend
            (default: torch's thread count on CPU, where a batch of at least
            that many images runs one image per thread; 8 on CUDA).
        total: length of ``pairs`` for the progress bar, when it has no len().
    """
    params = resolve_params(params)
    backend = resolve_backend(backend, device)
    if total is None and hasattr(pairs, "__len__"):
        total = len(pairs)
    bar = tqdm(total=total, desc="dense CRF", unit="img", disable=not progress)
    try:
        if backend == "wsss":
            device = crf_device(device)
            if batch_size is None:
                batch_size = 8 if device.type == "cuda" else torch.get_num_threads()
            for result in _imap_wsss(pairs, params, device, max(1, batch_size)):
                yield result
                bar.update()
            return
        _densecrf()  # fail here, not in a worker
        workers = workers or available_cores()
        tasks = ((image, probs, params) for image, probs in pairs)
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
                    params: str | CRFParams = "psa", *, backend: str = "auto",
                    device: str | torch.device | None = None, workers: int | None = None,
                    progress: bool = True) -> list[np.ndarray]:
    """Dense CRF of many images (:func:`imap_dense_crf`).

    Args:
        images: N arrays (H_i, W_i, 3) uint8.
        probs: N arrays (C_i, H_i, W_i) in [0, 1].

    Returns:
        N arrays (C_i, H_i, W_i) float32, in input order.
    """
    if len(images) != len(probs):
        raise ValueError(f"dense_crf_batch: {len(images)} images but {len(probs)} probability maps")
    return list(imap_dense_crf(list(zip(images, probs)), params, backend=backend, device=device,
                               workers=workers, progress=progress))
