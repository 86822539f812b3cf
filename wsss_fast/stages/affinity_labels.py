"""AffinityNet's training labels (PSA; SPEC.md, "AffinityNet and random walk").

Reads the CAM files of a split (``make-cam``) and the images; writes
``<out>/la/<name>.npz`` and ``<out>/ha/<name>.npz`` (below), read back by
the training stage (:mod:`wsss_fast.stages.affinity`) and by ``rw``.

Three steps, as in PSA:

1. :func:`make_affinity_labels` (``wsss-fast make-aff-labels``): for every
   image, a dense CRF of [bg, CAMs] with bg = (1 - max_c CAM)^alpha, once
   with a low alpha (4: only confident foreground survives) and once with a
   high alpha (32, paper 24: only confident background survives). The two
   CRF marginals are stored at image resolution, as PSA stores its crf_la /
   crf_ha score dicts, because training crops them together with the image
   and block-averages them before taking the argmax.
2. :func:`label_from_scores` (at training time, on the cropped scores):
   block-average both marginals by the feature stride, take the argmax of
   each; label = the low-alpha class, 255 where it is background, 0 where
   the high-alpha result is background, 255 where no score reaches the block
   (crop padding).
3. :func:`pair_labels`: each pixel of that label map and its forward
   neighbours (:func:`wsss_fast.pairs.offsets`) -> background-positive,
   foreground-positive and negative pairs; pairs touching 255 are ignored.

Stored files (one pair per image): ``<out>/la/<name>.npz`` and
``<out>/ha/<name>.npz``, score maps in the :mod:`wsss_fast.storage` format
with keys [0, classes of the image], uint8-quantised by default (a CRF
marginal is nearly 0/1 almost everywhere, so it compresses to a few tens of
kB per image instead of PSA's float dicts).
"""
from __future__ import annotations

import os
import time
from collections import deque
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import distributed
from ..crf import imap_dense_crf
from ..data.voc import VOCRoot
from ..errors import DataError
from ..pairs import counted_sources, offsets
from ..outputs import OutputFolder
from ..palette import VOID
from ..storage import ScoreMap, load_scores, require_score_files, save_scores

LOW, HIGH = "la", "ha"    # sub-folders of the low- and high-alpha CRF marginals
ALPHAS = (4.0, 32.0)      # PSA's infer_cls defaults (paper: 4 and 24)
NO_SCORE = 1e-5           # PSA: a block whose scores all stay below this is unlabelled
CAM_TOLERANCE = 1e-3      # float16 storage may round a max-normalised 1.0 up a little


def background_score(cams: np.ndarray | torch.Tensor, alpha: float):
    """PSA's background row (1 - max_c CAM)^alpha.

    Args:
        cams: (K, H, W) max-normalised CAMs in [0, 1] (numpy or torch); K may
            be 0 (the background is then 1 everywhere).
        alpha: exponent (4 / 32 for the affinity labels, 16 for the random walk).

    Returns:
        (H, W) array of the input's kind, in [0, 1].
    """
    if isinstance(cams, torch.Tensor):
        peak = cams.amax(0) if cams.shape[0] else cams.new_zeros(cams.shape[1:])
        return (1 - peak).clamp(0, 1).pow(alpha)
    peak = cams.max(0) if cams.shape[0] else np.zeros(cams.shape[1:], np.float32)
    return np.clip(1 - peak, 0, 1) ** alpha


def check_cams(cams: ScoreMap, name: str, size: tuple[int, int], cam_dir: Path) -> None:
    """DataError naming the file unless ``cams`` holds object classes (keys >= 1)
    at image size ``size`` = (H, W) with values in [0, 1]."""
    where = f"CAM file '{name}.npz' in {cam_dir}"
    if cams.data.shape[1:] != tuple(size):
        raise DataError(f"{where} is {cams.data.shape[2]}x{cams.data.shape[1]} but its image is "
                        f"{size[1]}x{size[0]}")
    if len(cams.keys) and cams.keys.min() < 1:
        raise DataError(f"{where} holds key 0 (background); CAM files hold object classes 1..C")
    if cams.data.size and (cams.data.min() < 0 or cams.data.max() > 1 + CAM_TOLERANCE):
        raise DataError(f"{where} has values in [{cams.data.min():.3g}, {cams.data.max():.3g}]; "
                        "CAMs must be max-normalised to [0, 1]")


def crf_inputs(cams: ScoreMap, alpha: float) -> np.ndarray:
    """(K + 1, H, W) float32 [bg, CAMs] for the CRF, bg from :func:`background_score`."""
    data = np.clip(cams.data, 0, 1)
    return np.concatenate([background_score(data, alpha)[None], data]).astype(np.float32)


def label_paths(out_dir: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """The low- and high-alpha score files of image ``name``."""
    out_dir = Path(out_dir)
    return out_dir / LOW / f"{name}.npz", out_dir / HIGH / f"{name}.npz"


def crfs_per_image(voc: VOCRoot, names: Sequence[str], cam_dir: str | os.PathLike,
                   inputs: Callable[[ScoreMap], Sequence[np.ndarray]], count: int, crf: str, *,
                   crf_backend: str = "auto", device: str | None = None, workers: int | None = None,
                   progress: bool = True) -> Iterator[tuple[str, np.ndarray, list[np.ndarray]]]:
    """Dense CRFs of ``count`` inputs per image, on ``crf_backend``
    (:func:`wsss_fast.crf.imap_dense_crf`: ours on ``device``, or pydensecrf on
    ``workers`` processes).

    For every image of ``names`` (the caller's share, whose outputs are
    missing): its CAM file is read and checked (:func:`check_cams`),
    ``inputs(cams)`` gives the ``count`` CRF inputs ((L, H, W)
    probabilities), and their marginals come back in order.

    Yields:
        (name, keys int64 (K + 1,) = [0, classes], [marginals (L, H, W)
        float32 per input]).
    """
    cam_dir = Path(cam_dir)
    require_score_files(cam_dir, names)
    voc.check_images(names)
    keys_of: deque[np.ndarray] = deque()  # filled as the jobs are read

    def jobs() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for name in names:
            image = voc.load_image(name)
            cams = load_scores(cam_dir / f"{name}.npz")
            check_cams(cams, name, image.shape[:2], cam_dir)
            probs = list(inputs(cams))
            if len(probs) != count:
                raise ValueError(f"crfs_per_image: inputs gave {len(probs)} CRF inputs, expected {count}")
            keys_of.append(np.concatenate([[0], cams.keys]))
            for p in probs:
                yield image, p

    results = imap_dense_crf(jobs(), crf, backend=crf_backend, device=device, workers=workers,
                             total=count * len(names), progress=progress)
    try:
        for name in names:
            marginals = [next(results) for _ in range(count)]
            yield name, keys_of.popleft(), marginals
    finally:
        results.close()  # stops the process pool


def pending_share(folder: OutputFolder, names: Sequence[str], outputs: Callable[[str], Iterable[Path]]
                  ) -> tuple[list[str], int]:
    """(this rank's share of the images whose ``outputs`` are missing or
    damaged, number of images done): every rank lists the pending images
    (:meth:`~wsss_fast.outputs.OutputFolder.pending`) and waits for the others
    before any writes (:func:`wsss_fast.distributed.barrier`), then takes
    every N-th."""
    todo = folder.pending(names, outputs)
    distributed.barrier()
    return distributed.shard(todo), len(names) - len(todo)


def make_affinity_labels(voc: VOCRoot, names: Sequence[str], cam_dir: str | os.PathLike,
                         out_dir: str | os.PathLike, *, alphas: tuple[float, float] = ALPHAS,
                         crf: str = "psa", workers: int | None = None, encoding: str = "uint8",
                         crf_backend: str = "auto", device: str | None = None,
                         progress: bool = True) -> dict:
    """Writes the low- and high-alpha CRF marginals of every image (see the
    module docstring). Images whose two files exist are skipped (resume); the
    rest are sharded over the torchrun ranks; the CRFs run on ``crf_backend``
    (:mod:`wsss_fast.crf`: ours on ``device``, or pydensecrf on ``workers``
    processes, default every core).

    Args:
        voc: the dataset (images).
        names: image names.
        cam_dir: CAM files ``<name>.npz`` (object classes 1..C, image
            resolution, max-normalised to [0, 1]).
        out_dir: output root (``la/`` and ``ha/`` are created in it).
        alphas: (low, high) background exponents, low < high.
        crf: CRF preset of :mod:`wsss_fast.crf` (PSA: "psa").
        encoding: score-file encoding, "uint8" or "float16".
        crf_backend: "auto", "wsss" or "pydensecrf".
        device: device of the wsss backend (default: CUDA if available).

    Returns:
        {"written": n, "skipped": n, "seconds": s}.
    """
    low, high = alphas
    if not 0 < low < high:
        raise DataError(f"affinity labels need 0 < low alpha < high alpha, got {low} and {high}")
    cam_dir, out_dir = Path(cam_dir), Path(out_dir)
    with OutputFolder(out_dir, "make-aff-labels", {"alphas": [low, high], "crf": crf, "encoding": encoding},
                      {"cam": cam_dir}) as folder:
        todo, skipped = pending_share(folder, names, lambda name: label_paths(out_dir, name))
        start = time.perf_counter()
        for name, keys, marginals in crfs_per_image(
                voc, todo, cam_dir, lambda cams: (crf_inputs(cams, low), crf_inputs(cams, high)), 2,
                crf, crf_backend=crf_backend, device=device, workers=workers,
                progress=progress):
            for path, q in zip(label_paths(out_dir, name), marginals):
                save_scores(path, keys, q, encoding=encoding)
    return {"written": len(todo), "skipped": skipped, "seconds": time.perf_counter() - start}


def load_label_scores(out_dir: str | os.PathLike, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys (K + 1,), low (K + 1, H, W), high (K + 1, H, W)) of image ``name``;
    DataError naming the files when they are missing or disagree."""
    low_path, high_path = label_paths(out_dir, name)
    low, high = load_scores(low_path), load_scores(high_path)
    if not np.array_equal(low.keys, high.keys) or low.data.shape != high.data.shape:
        raise DataError(f"affinity-label files of '{name}' in {out_dir} disagree (keys "
                        f"{low.keys.tolist()} vs {high.keys.tolist()}); delete both and re-run "
                        "make-aff-labels")
    if not len(low.keys) or low.keys[0] != 0:
        raise DataError(f"affinity-label file {low_path} has no background channel (key 0 first)")
    return low.keys, low.data, high.data


def label_from_scores(low: torch.Tensor, high: torch.Tensor, keys: torch.Tensor,
                      stride: int) -> torch.Tensor:
    """PSA's affinity label map at feature stride ``stride``.

    Args:
        low, high: (K + 1, H, W) CRF marginals with the low and high alpha,
            0 where no image is (crop padding).
        keys: (K + 1,) int label of each channel, keys[0] = 0 (background).
        stride: block side; H and W are zero-padded to a multiple of it (the
            blocks of a padded edge average over the whole block, as PSA's
            ``block_reduce``).

    Returns:
        (ceil(H / stride), ceil(W / stride)) int64: the low-alpha argmax
        class; 255 where that is background; 0 where the high-alpha argmax
        is background; 255 where every score of the block is < 1e-5.
    """
    k = low.shape[0]
    both = torch.cat([low, high]).float()[None]
    h, w = both.shape[-2:]
    both = F.pad(both, (0, -w % stride, 0, -h % stride))
    pooled = F.avg_pool2d(both, stride)[0]
    keys = keys.to(torch.int64)
    low_label = keys[pooled[:k].argmax(0)]
    high_label = keys[pooled[k:].argmax(0)]
    label = torch.where(low_label == 0, torch.full_like(low_label, VOID), low_label)
    label[high_label == 0] = 0
    label[pooled.amax(0) < NO_SCORE] = VOID
    return label


def pair_labels(label: torch.Tensor, radius: int, border: str = "all"
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three kinds of labelled pairs of AffinityNet's loss.

    Args:
        label: (B, H, W) int label maps at feature stride (0 background,
            1..C classes, 255 ignore).
        radius: pair radius (PSA: 5, giving the P = 34 forward offsets of
            :func:`wsss_fast.pairs.pair_offsets`).
        border: "all" uses every pair with both pixels in the map; "psa" only
            the sources PSA's label extraction uses (at least radius - 1 from
            the left, right and bottom borders).

    Returns:
        (bg_pos, fg_pos, neg), each (B, P, H, W) bool indexed like
        :func:`wsss_fast.ops.affinity`: [b, k, y, x] is the pair from (y, x)
        to (y + dy_k, x + dx_k). bg_pos: both background; fg_pos: both the
        same class >= 1; neg: both labelled (not 255) with different labels.
    """
    b, h, w = label.shape
    m = radius - 1
    padded = F.pad(label, (m, m, 0, m), value=VOID)
    source_ok = label != VOID
    bg, fg, neg = [], [], []
    for dy, dx in offsets(radius):
        target = padded[:, dy:dy + h, m + dx:m + dx + w]
        valid = source_ok & (target != VOID) & counted_sources(h, w, radius, dy, dx, border,
                                                               label.device)
        same = valid & (label == target)
        bg.append(same & (label == 0))
        fg.append(same & (label != 0))
        neg.append(valid & (label != target))
    if not bg:
        empty = torch.zeros(b, 0, h, w, dtype=torch.bool, device=label.device)
        return empty, empty, empty
    return torch.stack(bg, 1), torch.stack(fg, 1), torch.stack(neg, 1)
