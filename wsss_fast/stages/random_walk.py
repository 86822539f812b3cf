"""The random-walk stage (``wsss-fast rw``; PSA's infer_aff, ``--method
irn``: IRN's make_sem_seg_labels): CAMs propagated along the affinities of a
trained AffinityNet, or of the boundary map of a trained IRN boundary
network, then label maps.

Reads a trained AffinityNet or IRN boundary network (final.pt), the images and
the CAM files of a split; writes ``<out>/<name>.png`` label maps and, when
asked, the propagated maps as ``<scores>/<name>.npz``.

PSA (:func:`propagate`), per image: the background row (1 - max_c CAM)^alpha (alpha 16) is
computed at image resolution; image and maps are zero-padded at the bottom
and right to a multiple of the network stride (8), the maps average-pooled
by it; the network's affinities of the padded image drive
:func:`wsss_fast.ops.random_walk` (beta 8, 256 steps); the result is
upsampled bilinearly to the padded size, cropped to the image and its
argmax over [bg, classes of the image] is the label. ``border`` picks the
pairs of the walk ("all", or "psa" to drop those PSA's index construction
drops). An optional dense CRF on the propagated maps (each pixel's scores
divided by their sum) gives the label instead.

IRN (:func:`propagate_irn`; jiwoon-ahn/irn step/make_sem_seg_labels.py), per
image: the boundary map at stride 4 (IRN's EdgeDisplacement: the image and
its mirror zero-padded to the training crop, 512, sigmoid of the mean of
their logits); the CAMs at stride 4 (the image-resolution CAMs resized
bilinearly to ceil(H / 4) x ceil(W / 4) and each divided by its maximum +
1e-5; IRN resizes each scale's network output straight to that grid, which
gives the same map when the sides are multiples of 16 and otherwise differs by
interpolation rounding); :func:`wsss_fast.boundary.boundary_random_walk` of
the CAMs times (1 - boundary) (radius 5, beta 10, 256 steps); upsampled by 4
(bilinear), cropped to the image, divided by its maximum over all classes and
pixels; the label is the argmax over [0.25, those maps]. There is no
background row in the walk: the background is the constant threshold.

Images of the same size go through the network and the walk together.
"""
from __future__ import annotations

import math
import os
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .. import distributed, ops
from .affinity_labels import background_score, check_cams
from ..boundary import boundary_random_walk
from ..cpu import inference_context, prepare_model
from ..crf import imap_dense_crf
from ..data.voc import VOCRoot
from ..errors import DataError, UsageError
from ..inference import batches_by_size, image_sizes, shard_by_batch
from ..models.affinity_net import AffinityNet
from ..models.irn import BoundaryNet
from ..outputs import OutputFolder
from ..storage import load_scores, require_score_files, save_label_png, save_scores
from ..transforms import normalize


@dataclass
class WalkSettings:
    """PSA's infer_aff defaults: background exponent ``alpha`` 16, affinity
    exponent ``beta`` 8, ``n_steps`` 256 (logt 8) or "auto"
    (:func:`auto_steps`); ``border`` "all" or "psa"."""
    alpha: float = 16.0
    beta: float = 8.0
    n_steps: int | str = 256
    border: str = "all"


AUTO = "auto"
VOC_PIXELS = 500 * 375  # the typical PASCAL VOC image, for which PSA and IRN set 256 steps
REFERENCE_STEPS = 256


def auto_steps(height: int, width: int) -> int:
    """The walk length that keeps the walk's reach the same fraction of the
    image as PSA's 256 steps on a 500 x 375 VOC image: a random walk spreads
    over about sqrt(steps) grid cells, so the steps scale with the image's
    area: round(256 * H * W / (500 * 375)), at least 1 (22 steps at 128 x
    128, 256 at VOC's size; not capped above)."""
    return max(1, round(REFERENCE_STEPS * height * width / VOC_PIXELS))


def steps_for(n_steps: int | str, height: int, width: int) -> int:
    """``n_steps`` itself, or :func:`auto_steps` of the image when it is "auto"."""
    return auto_steps(height, width) if n_steps == AUTO else int(n_steps)


def alpha_for_threshold(threshold: float) -> float:
    """The background exponent alpha at which PSA's background score
    (1 - m)^alpha equals the largest CAM value m exactly at m = threshold, so
    that before the walk the argmax labels a pixel background iff its largest
    CAM is below the threshold. threshold in (0, 1)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"alpha_for_threshold: threshold must be in (0, 1), got {threshold}")
    return math.log(threshold) / math.log1p(-threshold)


def otsu_cam_threshold(cam_dir: str | os.PathLike, names: Sequence[str], *, progress: bool = False) -> float:
    """The Otsu threshold of the largest CAM value over every pixel of
    ``names`` (:func:`wsss_fast.eval.otsu_threshold`, no ground truth): where
    these CAMs split object from background. The references' walks assume
    their own classifiers' level: PSA's alpha 16 puts the background at 0.123
    (:func:`alpha_for_threshold`; its aff-label exponents 4 and 32 at 0.276
    and 0.077, ResNet-38's CAMs), IRN's background threshold is 0.25
    (ResNet-50's CAMs); other classifiers' CAMs split elsewhere."""
    from ..eval import cam_maximum_histogram, otsu_threshold

    return otsu_threshold(cam_maximum_histogram(cam_dir, names, progress=progress))


@dataclass
class IRNWalkSettings:
    """IRN's make_sem_seg_labels defaults: affinity exponent ``beta`` 10,
    ``n_steps`` 256 (2^exp_times, exp_times 8) or "auto" (:func:`auto_steps`), pair ``radius`` 5,
    background ``threshold`` 0.25 (sem_seg_bg_thres; "auto" until the command
    resolves it, :func:`otsu_cam_threshold`), images padded to
    ``pad_to`` (the training crop; IRN: 512) for the boundary network;
    ``border`` "all" (IRN's pairs) or "psa" (:func:`wsss_fast.ops.random_walk`)."""
    beta: float = 10.0
    n_steps: int | str = 256
    radius: int = 5
    threshold: float | str = 0.25
    pad_to: int = 512
    border: str = "all"


METHODS = ("psa", "irn")


def walk_settings(method: str, *, alpha: float | None = None, beta: float | None = None,
                  n_steps: int | None = None, border: str | None = None, radius: int | None = None,
                  threshold: float | None = None, pad_to: int | None = None
                  ) -> WalkSettings | IRNWalkSettings:
    """The settings of ``method`` ("psa" or "irn") with the given values (None:
    the method's default); a value the method does not use is a UsageError
    naming it."""
    if method not in METHODS:
        raise UsageError(f"unknown random-walk method {method!r}; choose one of {', '.join(METHODS)}")
    common = {k: v for k, v in (("beta", beta), ("n_steps", n_steps), ("border", border)) if v is not None}
    own = {"psa": {"alpha": alpha},
           "irn": {"radius": radius, "threshold": threshold, "pad_to": pad_to}}
    other = "irn" if method == "psa" else "psa"
    wrong = [k for k, v in own[other].items() if v is not None]
    if wrong:
        raise UsageError(f"{', '.join(wrong)}: used by the {other} random walk only, not by "
                         f"--method {method}")
    given = {k: v for k, v in own[method].items() if v is not None}
    if method == "psa":
        return WalkSettings(**common, **given)
    return IRNWalkSettings(**common, **given)


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
              settings: WalkSettings, *, walk: Callable = ops.random_walk,
              precision: str = "float32") -> torch.Tensor:
    """The walk of a batch of same-sized images.

    Args:
        model: AffinityNet in eval mode, on the images' device.
        images: (B, 3, H, W) uint8 or float RGB in [0, 255].
        cams: (B, K, H, W) max-normalised object CAMs in [0, 1] at image
            resolution (channels beyond an image's classes all zero).
        walk: the walk, ``(maps, aff, radius, beta, n_steps, border) -> maps``:
            the sparse :func:`wsss_fast.ops.random_walk`, or PSA's dense
            :func:`wsss_fast.reference.random_walk_dense` (benchmarks).
        precision: "float32", or "bfloat16" for the network in bfloat16
            autocast with a channels_last input on the CPU
            (:func:`wsss_fast.cpu.inference_context`); the walk stays float32.

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
    with inference_context(precision, x.device.type) as layout:
        aff = model(layout(x))
    if aff.shape[-2:] != grid.shape[-2:]:
        raise ValueError(f"the network's grid {tuple(aff.shape[-2:])} does not match the padded "
                         f"image's {tuple(grid.shape[-2:])} (stride {s})")
    walked = walk(grid.contiguous(), aff.to(grid.dtype), model.radius, settings.beta,
                  steps_for(settings.n_steps, h, w), settings.border)
    up = F.interpolate(walked, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return up[..., :h, :w]


def strided_cams(cams: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """IRN's stride-4 CAMs from image-resolution ones: (B, K, H, W) resized
    bilinearly (align_corners=False) to ``size`` and each map divided by its
    maximum + 1e-5."""
    small = F.interpolate(cams, size=size, mode="bilinear", align_corners=False)
    return small / (small.amax((2, 3), keepdim=True) + 1e-5)


@torch.no_grad()
def propagate_irn(model: BoundaryNet, images: torch.Tensor, cams: torch.Tensor,
                  settings: IRNWalkSettings, *, precision: str = "float32") -> torch.Tensor:
    """IRN's walk of a batch of same-sized images (module docstring).

    Args:
        model: BoundaryNet in eval mode, on the images' device.
        images: (B, 3, H, W) uint8 or float RGB in [0, 255].
        cams: (B, K, H, W) max-normalised object CAMs in [0, 1] at image
            resolution (channels beyond an image's classes all zero).
        precision: of the network on the CPU (:func:`propagate`).

    Returns:
        (B, K + 1, H, W) float32: channel 0 the constant background
        threshold, then the propagated maps divided by each image's maximum.
    """
    h, w = images.shape[-2:]
    if cams.shape[1] == 0:  # no class in any image: all background
        return torch.full((len(images), 1, h, w), settings.threshold, device=images.device)
    s = model.stride
    with inference_context(precision, images.device.type) as layout:
        boundary = model.predict(layout(normalize(images)), settings.pad_to)
    grid = strided_cams(cams.float(), tuple(boundary.shape[-2:]))
    walked = boundary_random_walk(grid, boundary, settings.radius, settings.beta,
                                  steps_for(settings.n_steps, h, w), settings.border)
    up = F.interpolate(walked, scale_factor=s, mode="bilinear", align_corners=False)[..., :h, :w]
    peak = up.amax((1, 2, 3), keepdim=True)
    up = torch.where(peak > 0, up / peak.clamp_min(torch.finfo(up.dtype).tiny), 0.0)
    return torch.cat([torch.full_like(up[:, :1], settings.threshold), up], 1)


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


def walk_images(model: nn.Module, voc: VOCRoot, names: Sequence[str], cam_dir: str | os.PathLike,
                settings: WalkSettings | IRNWalkSettings, *, batch_size: int = 8, device: str = "cpu",
                num_workers: int = 0, precision: str = "float32") -> Iterator[Propagated]:
    """:func:`propagate` (PSA settings and an AffinityNet) or
    :func:`propagate_irn` (IRN settings and a BoundaryNet) over ``names``,
    batched by image size; yields each image's result (argmax labels) as its
    batch finishes."""
    walk = propagate_irn if isinstance(settings, IRNWalkSettings) else propagate
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
        scores = walk(model, images.to(device), cams.to(device), settings, precision=precision).cpu().numpy()
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


def run_random_walk(model: nn.Module, voc: VOCRoot, names: Sequence[str], cam_dir: str | os.PathLike,
                    out_dir: str | os.PathLike, settings: WalkSettings | IRNWalkSettings, *,
                    scores_dir: str | os.PathLike | None = None, encoding: str = "float16",
                    crf: str | None = None, crf_workers: int | None = None,
                    crf_backend: str = "auto", batch_size: int = 8, device: str = "cpu",
                    num_workers: int = 0, precision: str = "float32", progress: bool = True,
                    inputs: dict | None = None) -> dict:
    """Writes ``out_dir/<name>.png`` label maps of the walk ``settings`` picks
    (``model``: an AffinityNet for PSA's, a BoundaryNet for IRN's), and the
    propagated maps as ``scores_dir/<name>.npz`` (keys [0, classes]) when
    asked, for every image; images whose outputs exist and are whole are
    skipped (resume), the rest sharded (whole batches) over the torchrun
    ranks. ``inputs`` (e.g. {"model": final.pt}) are recorded in the
    folder's provenance with the settings and the CAM folder
    (:class:`wsss_fast.outputs.OutputFolder`). ``precision``: of the network
    on the CPU, "float32" or "bfloat16" (:func:`wsss_fast.cpu.resolve_precision`).

    Returns:
        {"written": n, "skipped": n, "seconds": s, "images_per_second": r}.
    """
    unresolved = [k for k in ("alpha", "threshold") if getattr(settings, k, None) == AUTO]
    if unresolved:
        raise UsageError(f"run_random_walk: {unresolved[0]} 'auto' needs the whole split's CAMs; resolve it "
                         "first (otsu_cam_threshold, as the rw command does)")
    cam_dir, out_dir = Path(cam_dir), Path(out_dir)
    scores_dir = Path(scores_dir) if scores_dir is not None else None

    def outputs(name: str) -> list[Path]:
        return [out_dir / f"{name}.png"] + ([scores_dir / f"{name}.npz"] if scores_dir is not None else [])

    recorded = {"method": "irn" if isinstance(settings, IRNWalkSettings) else "psa", **asdict(settings),
                "crf": crf, "encoding": encoding, "scores": scores_dir is not None, "precision": precision}
    with OutputFolder(out_dir, "rw", recorded, {"cam": cam_dir, **(inputs or {})}) as folder:
        todo = folder.pending(names, outputs)
        skipped = len(names) - len(todo)
        distributed.barrier()  # every rank has listed the pending images before anyone writes
        todo = shard_by_batch([voc.image_path(n) for n in todo], batch_size, todo)
        require_score_files(cam_dir, todo)
        voc.check_images(todo)
        model = prepare_model(model.eval().to(device), precision)
        start = time.perf_counter()
        results = walk_images(model, voc, todo, cam_dir, settings, batch_size=batch_size, device=device,
                              num_workers=num_workers, precision=precision)
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
