"""CAM inference one image and one pass at a time, the way the reference
scripts run it (PSA's and SC-CAM's infer_cls.py; DRS's test_cls.py,
localization_map_gen.py and pseudo_seg_label_gen.py): each pass is its own
forward of a single image, brought to the image size, masked by the label
and accumulated in numpy. The ground truth of the batched engine
(:mod:`wsss_fast.stages.cam`) and the baseline of benchmarks/bench_cam.py.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..inference import CamSettings


def _inputs(image: torch.Tensor, settings: CamSettings) -> list[torch.Tensor]:
    height, width = image.shape[-2:]
    if settings.sizes:
        sizes = [(s, s) for s in settings.sizes]
    else:
        sizes = [(max(1, round(height * s)), max(1, round(width * s))) for s in settings.scales]
    return [image[None] if size == (height, width) else
            F.interpolate(image[None], size=size, mode="bilinear", align_corners=False) for size in sizes]


@torch.no_grad()
def cam_loop(maps_fn: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, label: torch.Tensor,
             settings: CamSettings) -> np.ndarray:
    """Fused maps of one image.

    Args:
        maps_fn: (1, 3, h, w) -> (1, C, h', w') class maps (a model's ``class_maps``).
        image: (3, H, W) normalised image.
        label: (C,) multi-hot image label.
        settings: the procedure (see :class:`wsss_fast.inference.CamSettings`).

    Returns:
        (C, H, W) float32; channels of classes absent from the label are 0.
    """
    height, width = image.shape[-2:]
    mask = label.detach().cpu().numpy().astype(np.float32)[:, None, None]
    fused = np.zeros((len(mask), height, width), dtype=np.float32)
    passes = 0
    for x in _inputs(image, settings):
        for flipped in ((False, True) if settings.flip else (False,)):
            maps = maps_fn(x.flip(-1) if flipped else x).float()
            maps = F.interpolate(maps, size=(height, width), mode="bilinear",
                                 align_corners=settings.align_corners)[0]
            if flipped:
                maps = maps.flip(-1)
            cam = maps.cpu().numpy() * mask
            if settings.normalize and settings.fuse == "max":  # DRS: every pass on its own
                cam = cam / (cam.max(axis=(1, 2), keepdims=True) + 1e-5)
            if settings.fuse == "sum":
                fused += cam
            else:
                fused = cam if passes == 0 else np.maximum(fused, cam)
            passes += 1
    if settings.normalize:
        if settings.fuse == "sum":  # PSA / SC-CAM: the sum, once
            fused = fused / (fused.max(axis=(1, 2), keepdims=True) + 1e-5)
        return fused.astype(np.float32)
    if settings.fuse == "sum":
        fused = fused / passes
    return np.maximum(fused, 0.0).astype(np.float32)
