"""The random-walk stage (``wsss-fast rw``; PSA's infer_aff): CAMs propagated
along the affinities of a trained AffinityNet, then label maps.

Reads a trained AffinityNet (final.pt), the images and the CAM files of a
split; writes ``<out>/<name>.png`` label maps and, when asked, the
propagated maps as ``<scores>/<name>.npz``.

Per image, as PSA: the background row (1 - max_c CAM)^alpha (alpha 16) is
computed at image resolution; image and maps are zero-padded at the bottom
and right to a multiple of the network stride (8), the maps average-pooled
by it; the network's affinities of the padded image drive
:func:`wsss_fast.ops.random_walk` (beta 8, 256 steps); the result is
upsampled bilinearly to the padded size, cropped to the image and its
argmax over [bg, classes of the image] is the label. ``border`` picks the
pairs of the walk ("all", or "psa" to drop those PSA's index construction
drops). An optional dense CRF on the propagated maps (each pixel's scores
divided by their sum) gives the label instead.

Images of the same size go through the network and the walk together.
"""
from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .. import distributed, ops
from .affinity_labels import background_score, check_cams
from ..crf import imap_dense_crf
from ..data.voc import VOCRoot
from ..errors import DataError
from ..inference import batches_by_size, image_sizes, shard_by_batch
from ..models.affinity_net import AffinityNet
from ..outputs import OutputFolder
from ..storage import load_scores, require_score_files, save_label_png, save_scores
from ..transforms import normalize


@dataclass
class WalkSettings:
    """PSA's infer_aff defaults: background exponent ``alpha`` 16, affinity
    exponent ``beta`` 8, ``n_steps`` 256 (logt 8); ``border`` "all" or "psa"."""
    alpha: float = 16.0
    beta: float = 8.0
    n_steps: int = 256
    border: str = "all"


@dataclass
class Propagated:
    """One image's result: ``keys`` (K + 1,) labels of the channels (0 first),
    ``scores`` float32 (K + 1, H, W) propagated maps, ``label`` (H, W) uint8."""
    name: str
    image: np.ndarray
    keys: np.ndarray
    scores: np.ndarray
    label: np.ndarray


@torch.no_grad()
def propagate(model: AffinityNet, images: torch.Tensor, cams: torch.Tensor,
              settings: WalkSettings, *, walk: Callable = ops.random_walk) -> torch.Tensor:
    """The walk of a batch of same-sized images.

    Args:
        model: AffinityNet in eval mode, on the images' device.
        images: (B, 3, H, W) uint8 or float RGB in [0, 255].
        cams: (B, K, H, W) max-normalised object CAMs in [0, 1] at image
            resolution (channels beyond an image's classes all zero).
        walk: the walk, ``(maps, aff, radius, beta, n_steps, border) -> maps``:
            the sparse :func:`wsss_fast.ops.random_walk`, or PSA's dense
            :func:`wsss_fast.reference.random_walk_dense` (benchmarks).

    Returns:
        (B, K + 1, H, W) float32 propagated maps, channel 0 the background.
    """
    _, _, h, w = images.shape
    s = model.stride
    cams = cams.float()
    bg = torch.stack([background_score(c, settings.alpha) for c in cams])[:, None]
    maps = torch.cat([bg, cams], 1)
    pad = (0, -w % s, 0, -h % s)
    x = F.pad(normalize(images), pad)
    grid = F.avg_pool2d(F.pad(maps, pad), s)
    aff = model(x)
    if aff.shape[-2:] != grid.shape[-2:]:
        raise ValueError(f"the network's grid {tuple(aff.shape[-2:])} does not match the padded "
                         f"image's {tuple(grid.shape[-2:])} (stride {s})")
    walked = walk(grid.contiguous(), aff.to(grid.dtype), model.radius, settings.beta,
                  settings.n_steps, settings.border)
    up = F.interpolate(walked, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return up[..., :h, :w]


class _WalkInputs(Dataset):
    """(name, image (H, W, 3) uint8, keys (K,), cams (K, H, W)) per image, or
    the DataError that reading them raised (re-raised by the main process, so
    that the command line prints it as one line)."""

    def __init__(self, voc: VOCRoot, names: Sequence[str], cam_dir: Path):
        self.voc, self.names, self.cam_dir = voc, list(names), cam_dir

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int):
        name = self.names[index]
        try:
            image = self.voc.load_image(name)
            cams = load_scores(self.cam_dir / f"{name}.npz")
            check_cams(cams, name, image.shape[:2], self.cam_dir)
        except DataError as exc:
            return exc
        return name, image, cams.keys, np.clip(cams.data, 0, 1)


def walk_images(model: AffinityNet, voc: VOCRoot, names: Sequence[str], cam_dir: str | os.PathLike,
                settings: WalkSettings, *, batch_size: int = 8, device: str = "cpu",
                num_workers: int = 0) -> Iterator[Propagated]:
    """:func:`propagate` over ``names``, batched by image size; yields each
    image's result (argmax labels) as its batch finishes."""
    cam_dir = Path(cam_dir)
    batches = batches_by_size(image_sizes([voc.image_path(n) for n in names]), batch_size)
    loader = DataLoader(_WalkInputs(voc, names, cam_dir), batch_sampler=batches,
                        num_workers=num_workers, collate_fn=list)
    for batch in loader:
        for item in batch:
            if isinstance(item, DataError):
                raise item
        k = max(len(keys) for _, _, keys, _ in batch)
        h, w = batch[0][1].shape[:2]
        cams = torch.zeros(len(batch), k, h, w)
        for i, (_, _, keys, data) in enumerate(batch):
            cams[i, :len(keys)] = torch.from_numpy(data)
        images = torch.from_numpy(np.stack([image for _, image, _, _ in batch])).permute(0, 3, 1, 2)
        scores = propagate(model, images.to(device), cams.to(device), settings).cpu().numpy()
        for (name, image, keys, _), s in zip(batch, scores):
            s = s[:len(keys) + 1]
            keys = np.concatenate([[0], keys])
            yield Propagated(name, image, keys, s, keys[s.argmax(0)].astype(np.uint8))


def with_crf(results: Iterator[Propagated], preset: str, *, backend: str = "auto",
             device: str | None = None, workers: int | None = None) -> Iterator[Propagated]:
    """``results`` with each label replaced by the argmax of a dense CRF on the
    propagated maps normalised to sum 1 per pixel (:mod:`wsss_fast.crf`'s
    ``backend``: ours on ``device``, or pydensecrf on ``workers`` processes)."""
    pending: deque[Propagated] = deque()

    def pairs():
        for r in results:
            pending.append(r)
            yield r.image, r.scores / np.maximum(r.scores.sum(0, keepdims=True), 1e-12)

    for q in imap_dense_crf(pairs(), preset, backend=backend, device=device, workers=workers,
                            progress=False):
        r = pending.popleft()
        r.label = r.keys[q.argmax(0)].astype(np.uint8)
        yield r


def run_random_walk(model: AffinityNet, voc: VOCRoot, names: Sequence[str], cam_dir: str | os.PathLike,
                    out_dir: str | os.PathLike, settings: WalkSettings, *,
                    scores_dir: str | os.PathLike | None = None, encoding: str = "float16",
                    crf: str | None = None, crf_workers: int | None = None,
                    crf_backend: str = "auto", batch_size: int = 8,
                    device: str = "cpu", num_workers: int = 0, progress: bool = True,
                    inputs: dict | None = None) -> dict:
    """Writes ``out_dir/<name>.png`` label maps (and the propagated maps as
    ``scores_dir/<name>.npz``, keys [0, classes]) for every image; images
    whose outputs exist and are whole are skipped (resume), the rest sharded
    (whole batches) over the torchrun ranks. ``inputs`` (e.g. {"model":
    final.pt}) are recorded in the folder's provenance with the settings
    and the CAM folder (:class:`wsss_fast.outputs.OutputFolder`).

    Returns:
        {"written": n, "skipped": n, "seconds": s, "images_per_second": r}.
    """
    cam_dir, out_dir = Path(cam_dir), Path(out_dir)
    scores_dir = Path(scores_dir) if scores_dir is not None else None

    def outputs(name: str) -> list[Path]:
        return [out_dir / f"{name}.png"] + ([scores_dir / f"{name}.npz"] if scores_dir is not None else [])

    recorded = {**asdict(settings), "crf": crf, "encoding": encoding, "scores": scores_dir is not None}
    with OutputFolder(out_dir, "rw", recorded, {"cam": cam_dir, **(inputs or {})}) as folder:
        todo = folder.pending(names, outputs)
        skipped = len(names) - len(todo)
        distributed.barrier()  # every rank has listed the pending images before anyone writes
        todo = shard_by_batch([voc.image_path(n) for n in todo], batch_size, todo)
        require_score_files(cam_dir, todo)
        voc.check_images(todo)
        model = model.eval().to(device)
        start = time.perf_counter()
        results = walk_images(model, voc, todo, cam_dir, settings, batch_size=batch_size, device=device,
                              num_workers=num_workers)
        if crf is not None:
            results = with_crf(results, crf, backend=crf_backend, device=device,
                               workers=crf_workers)
        for r in tqdm(results, total=len(todo), desc="random walk", unit="img", disable=not progress):
            if scores_dir is not None:
                save_scores(scores_dir / f"{r.name}.npz", r.keys, r.scores, encoding=encoding)
            save_label_png(out_dir / f"{r.name}.png", r.label)
    seconds = time.perf_counter() - start
    return {"written": len(todo), "skipped": skipped, "seconds": seconds,
            "images_per_second": len(todo) / seconds if seconds > 0 else 0.0}
