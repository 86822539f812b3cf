"""Class activation maps of a split (SPEC.md, "CAM"): multi-scale inference
batched over same-sized images, normalised, kept for the classes of each
image's label, one ``<name>.npz`` per image (:mod:`wsss_fast.storage`).

Reads a trained classifier or refinement network (final.pt) and the images
and image labels of a split; writes ``<out>/<name>.npz`` per image (the maps
of the image's classes) and ``<out>/provenance.json`` (the procedure and the
model it was made with; :mod:`wsss_fast.outputs`).

Two reference procedures (presets of :class:`wsss_fast.inference.CamSettings`):

``psa`` (PSA's and SC-CAM's infer_cls.py): the image at scales 1.0, 0.5,
1.5, 2.0 of its size, each also mirrored (8 passes); per pass
ReLU(CAM head) at the backbone's stride, resized bilinearly to the image
size (align_corners=False); the passes summed, then every class map divided
by its maximum + 1e-5.

``drs`` (DRS's test_cls.py / localization_map_gen.py): the image squashed to
256 x 256, 320 x 320 and 384 x 384, no mirroring; per pass the rectified
CAM resized to the image size with align_corners=True and divided by its
own maximum + 1e-5; the passes fused by element-wise maximum.

Maps of the refinement network (``normalize=False``) are used as DRS's
pseudo_seg_label_gen.py uses them: not normalised, fused, clamped at 0.

Where the engine differs from the reference scripts (values, not layout):
the scaled images are resized with torch's bilinear filter on the
normalised image (PSA: PIL bicubic on the 8-bit image; DRS: PIL bilinear to
320 x 320, then torch bilinear to the size), and only the maps of each
image's label classes are resized and fused (the others would be zeroed).

Batching: images of one size form a batch (``batch_size`` images), and
every scale of a batch is one forward pass of all its images with their
mirrors; the fused maps stay on the device until the label channels of each
image are copied out. The result equals a one-image-at-a-time loop
(:func:`wsss_fast.reference.cam.cam_loop`) to float32 rounding.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from ..outputs import OutputFolder
from ..inference import CamSettings, batches_by_size, image_sizes, multiscale_maps, shard_by_batch
from ..storage import ENCODINGS, save_scores
from ..transforms import normalize



PRESETS = {
    "psa": CamSettings(),
    "drs": CamSettings(scales=(), sizes=(256, 320, 384), flip=False, fuse="max", align_corners=True),
}


def preset_for(metadata: dict) -> str:
    """The reference procedure of a model: "drs" for DRS classifiers and
    refinement networks, else "psa"."""
    return "drs" if metadata.get("method") == "drs" or metadata.get("kind") == "refine" else "psa"


def _max_normalise(maps: torch.Tensor) -> torch.Tensor:
    """(N, K, H, W) maps divided by their per-map maximum + 1e-5."""
    return maps / (maps.amax(dim=(2, 3), keepdim=True) + 1e-5)


@torch.inference_mode()
def fused_maps(maps_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
               channels: torch.Tensor, settings: CamSettings) -> torch.Tensor:
    """All passes of a batch of same-sized images, fused.

    Args:
        maps_fn: (B, 3, h, w) -> (B, C, h', w') class maps.
        images: (N, 3, H, W) normalised images.
        channels: (N, K) int64 class indices (0-based) to compute for each
            image, on the device; only these maps are resized to full
            resolution and fused.
        settings: :class:`CamSettings`.

    Returns:
        (N, K, H, W) float32 fused maps, channel k of image i being class
        ``channels[i, k]`` (max-normalised unless ``settings.normalize`` is False).
    """
    n = len(images)

    def forward(x):  # x: the n images, or the n images and their mirrors
        maps = maps_fn(x)
        index = channels.repeat(len(x) // n, 1)
        return maps.gather(1, index[:, :, None, None].expand(-1, -1, *maps.shape[2:]))

    size = tuple(images.shape[-2:])
    kwargs = dict(flip=settings.flip, size=size, fuse=settings.fuse, align_corners=settings.align_corners,
                  per_pass=_max_normalise if settings.normalize and settings.fuse == "max" else None)
    if settings.scales:
        fused = multiscale_maps(forward, images, settings.scales, **kwargs)
    else:
        fused = None
        for side in settings.sizes:
            x = images if size == (side, side) else F.interpolate(
                images, size=(side, side), mode="bilinear", align_corners=False)
            maps = multiscale_maps(forward, x, (1.0,), **kwargs)
            if fused is None:
                fused = maps
            elif settings.fuse == "sum":
                fused += maps
            else:
                torch.maximum(fused, maps, out=fused)
    if settings.normalize:
        return _max_normalise(fused) if settings.fuse == "sum" else fused
    if settings.fuse == "sum":
        fused /= settings.passes
    return fused.clamp_(min=0.0)


def batch_cams(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, settings: CamSettings,
               *, amp: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """CAMs of a batch of same-sized images, for the classes of each label.

    Args:
        model: a network with ``class_maps`` ((B, 3, h, w) -> (B, C, h', w')), in eval mode.
        images: (N, 3, H, W) uint8 RGB on the model's device.
        labels: (N, C) multi-hot image labels.
        amp: run the network in float16 autocast (CUDA).

    Returns:
        per image (keys, maps): keys int64 (K,) label indices 1..C of the
        classes present, maps float32 (K, H, W) on the CPU.
    """
    present = labels.to(images.device) > 0.5
    counts = present.sum(dim=1)
    height, width = images.shape[-2:]
    if int(counts.max()) == 0:
        return [(np.zeros(0, np.int64), np.zeros((0, height, width), np.float32))] * len(images)
    # each image's classes first (ascending), padded with other indices up to the largest count
    order = torch.sort((~present).to(torch.uint8), dim=1, stable=True).indices[:, :int(counts.max())]
    with torch.autocast(images.device.type, enabled=amp):
        fused = fused_maps(model.class_maps, normalize(images), order, settings)
    out = []
    for i, k in enumerate(counts.tolist()):
        out.append(((order[i, :k] + 1).cpu().numpy(), fused[i, :k].cpu().numpy()))
    return out


def make_cams(model: nn.Module, dataset, out_dir: str | os.PathLike, settings: CamSettings, *,
              batch_size: int = 8, device: str | torch.device = "cpu", num_workers: int = 2,
              encoding: str = "float16", amp: bool = False, progress: bool = True,
              inputs: dict | None = None) -> dict:
    """Writes ``<out_dir>/<name>.npz`` for every image of ``dataset`` that lacks one.

    Under torchrun every rank lists the images without output, waits for the
    others (:func:`wsss_fast.distributed.barrier`) and takes its share of
    the list, whole batches at a time (:func:`wsss_fast.inference.shard_by_batch`).

    Args:
        model: network with ``class_maps`` and ``num_classes``.
        dataset: :class:`wsss_fast.data.VOCSegmentation` with labels
            (its items: ``name``, uint8 ``image`` (3, H, W), ``label`` (C,)).
        settings: :class:`CamSettings`.
        batch_size: images per batch (all of one size).
        num_workers: DataLoader processes decoding images.
        encoding: "float16" or "uint8" (see :func:`wsss_fast.storage.save_scores`).
        inputs: the files the CAMs come from (e.g. {"model": final.pt}),
            recorded in the folder's provenance with the settings, so that
            a resume with another model or other settings is refused
            (:class:`wsss_fast.outputs.OutputFolder`).

    Returns:
        dict with ``written`` (names this process wrote), ``skipped`` (outputs
        already there), ``seconds`` and ``images_per_second``.
    """
    from torch.utils.data import DataLoader, default_collate
    from tqdm import tqdm

    from ..distributed import barrier, local_device

    if encoding not in ENCODINGS:
        raise UsageError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    if dataset.labels is None:
        raise UsageError("CAM inference needs the image labels (dataset built with labels=True)")
    if getattr(model, "num_classes", dataset.num_classes) != dataset.num_classes:
        raise UsageError(f"the model has {model.num_classes} classes but the dataset "
                         f"{dataset.voc.root} has {dataset.num_classes}")
    out_dir = Path(out_dir)
    folder = OutputFolder(out_dir, "make-cam", {**asdict(settings), "encoding": encoding, "amp": amp},
                          inputs)
    with folder:
        names = dataset.names
        todo = set(folder.pending(names))
        pending = [i for i, name in enumerate(names) if name in todo]
        barrier()
        mine = shard_by_batch([dataset.voc.image_path(names[i]) for i in pending], batch_size, pending)
        device = local_device(device)
        model = model.to(device).eval()
        sizes = image_sizes([dataset.voc.image_path(names[i]) for i in mine])
        batches = batches_by_size(sizes, batch_size, mine)
        loader = DataLoader(dataset, batch_sampler=batches, collate_fn=default_collate,
                            num_workers=num_workers, pin_memory=device.type == "cuda")
        written: list[str] = []
        start = time.perf_counter()
        # compressing a file takes tens of ms: several writer threads (zlib releases the GIL)
        with ThreadPoolExecutor(max_workers=max(2, min(8, (os.cpu_count() or 2) // 2))) as writers, \
                tqdm(total=len(mine), desc="make-cam", unit="img", disable=not progress) as bar:
            in_flight: list[Future] = []
            for batch in loader:
                images = batch["image"].to(device, non_blocking=True)
                cams = batch_cams(model, images, batch["label"], settings, amp=amp)
                for name, (keys, maps) in zip(batch["name"], cams):
                    in_flight.append(writers.submit(save_scores, out_dir / f"{name}.npz", keys, maps,
                                                    encoding))
                    written.append(name)
                while len(in_flight) > 2 * batch_size:
                    in_flight.pop(0).result()
                bar.update(len(batch["name"]))
            for future in in_flight:
                future.result()
    seconds = time.perf_counter() - start
    return {"written": written, "skipped": len(names) - len(pending), "seconds": seconds,
            "images_per_second": len(written) / seconds if seconds > 0 else float("nan")}


def resolve_settings(preset: str, *, scales: Sequence[float] | None = None,
                     sizes: Sequence[int] | None = None, flip: bool | None = None,
                     fuse: str | None = None, align_corners: bool | None = None,
                     normalize: bool = True) -> CamSettings:
    """A preset ("psa" or "drs") with the given fields replaced (None keeps
    the preset's). Giving ``scales`` drops the preset's sizes and vice versa."""
    if preset not in PRESETS:
        raise UsageError(f"unknown CAM preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if scales and sizes:
        raise UsageError("give --scales or --sizes, not both")
    changes: dict = {"normalize": normalize}
    if scales:
        changes.update(scales=tuple(float(s) for s in scales), sizes=())
    if sizes:
        changes.update(sizes=tuple(int(s) for s in sizes), scales=())
    for key, value in (("flip", flip), ("fuse", fuse), ("align_corners", align_corners)):
        if value is not None:
            changes[key] = value
    return replace(PRESETS[preset], **changes)
