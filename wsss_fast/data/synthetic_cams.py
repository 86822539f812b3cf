"""CAM-like maps made from ground-truth masks, to exercise and measure the
stages after CAM (affinity labels, random walk) without a trained classifier.

Each class present in the mask gets its mask weighted by exp(-focus * (1 -
a smooth random field in [0, 1])) (CAMs peak on a discriminative part and
fade over the rest of the object), blurred (CAMs are coarse and bleed over
boundaries), max-normalised, plus sparse smooth false activations (blobs
over part of the image, zero elsewhere), clipped at 0 and max-normalised
again: the format of :mod:`wsss_fast.storage` CAM files (object classes
only, values in [0, 1]). With the defaults, on the demo dataset (128 px),
the best background threshold is about 0.2 with an mIoU about 50%, like
PSA's ResNet-38 CAMs on VOC.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Smooth random field in [0, 1]."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    span = field.max() - field.min()
    return (field - field.min()) / span if span > 0 else np.zeros(shape)


def synthetic_cams(mask: np.ndarray, rng: np.random.Generator, *, blur: float = 0.04,
                   focus: float = 8.0, noise: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """CAM-like maps of the object classes in ``mask``.

    Args:
        mask: (H, W) uint8 ground truth (0 background, 1..C, 255 void).
        rng: random generator (the maps are a function of it and the mask).
        blur: Gaussian sigma as a fraction of the longer image side.
        focus: 0 keeps the whole object at full strength; larger values
            concentrate the map on a random part of it.
        noise: peak height of the false activations (relative to the
            object's peak of 1).

    Returns:
        (keys (K,) int64 classes present, data (K, H, W) float32 in [0, 1]),
        each channel's maximum 1 (or all 0).
    """
    keys = np.array(sorted(int(c) for c in np.unique(mask) if c not in (0, 255)), dtype=np.int64)
    sigma = blur * max(mask.shape)
    data = np.zeros((len(keys), *mask.shape), np.float32)
    for i, c in enumerate(keys):
        weight = np.exp(-focus * (1 - _smooth_field(rng, mask.shape, 2 * sigma + 1)))
        cam = ndimage.gaussian_filter((mask == c) * weight, sigma)
        blobs = np.clip(2 * _smooth_field(rng, mask.shape, sigma + 1) - 1, 0, None) ** 2
        cam = cam / max(cam.max(), 1e-12) + noise * blobs
        data[i] = cam / max(cam.max(), 1e-12)
    return keys, data
