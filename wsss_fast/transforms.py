"""Image augmentations of the references, on (3, H, W) tensors, driven by an
explicit ``numpy.random.Generator`` so that an epoch is a pure function of
(seed, epoch, index) and interrupted training resumes exactly.

Images enter as uint8 RGB (3, H, W) and leave ImageNet-normalised float32
(see :func:`normalize`); label maps (H, W) travel through the same geometric
transforms with nearest-neighbour resizing and 255 as fill.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .models.backbone import IMAGENET_MEAN, IMAGENET_STD
from .palette import VOID

PAD_AT = ("random", "end")

_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255.0
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255.0


def normalize(image: torch.Tensor) -> torch.Tensor:
    """uint8 or float RGB in [0, 255], (..., 3, H, W) -> float32 ImageNet-normalised."""
    return (image.float() - _MEAN.to(image.device)) / _STD.to(image.device)


def resize(image: torch.Tensor, size: tuple[int, int], *, label: bool = False) -> torch.Tensor:
    """Resizes (C, H, W) float (bilinear, align_corners=False) or an (H, W)
    label map (nearest) to ``size`` = (H', W')."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    if label:
        return F.interpolate(image[None, None].float(), size=size, mode="nearest")[0, 0].to(image.dtype)
    return F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]


def scaled_size(height: int, width: int, *, long: int | None = None, short: int | None = None
                ) -> tuple[int, int]:
    """(H', W') with the long (or short) side set to the given length and the
    aspect ratio kept (rounded to the nearest pixel)."""
    side = max(height, width) if long is not None else min(height, width)
    scale = (long if long is not None else short) / side
    return max(1, round(height * scale)), max(1, round(width * scale))


def colour_jitter(image: torch.Tensor, rng: np.random.Generator, brightness: float,
                  contrast: float, saturation: float, hue: float) -> torch.Tensor:
    """torchvision-style ColorJitter on float RGB in [0, 255]: brightness,
    contrast and saturation factors uniform in [1 - v, 1 + v], hue shift
    uniform in [-hue, hue] turns (a rotation of the chroma plane), applied in
    a random order and clipped to [0, 255]."""
    order = rng.permutation(4)
    factors = [rng.uniform(max(0.0, 1 - v), 1 + v) for v in (brightness, contrast, saturation)]
    shift = rng.uniform(-hue, hue)
    grey_weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    for op in order:
        if op == 0 and brightness > 0:
            image = image * factors[0]
        elif op == 1 and contrast > 0:
            mean = (image * grey_weights).sum(0).mean()
            image = (image - mean) * factors[1] + mean
        elif op == 2 and saturation > 0:
            grey = (image * grey_weights).sum(0, keepdim=True)
            image = (image - grey) * factors[2] + grey
        elif op == 3 and hue > 0:
            image = _rotate_hue(image, shift)
        image = image.clamp(0, 255)
    return image


def _rotate_hue(image: torch.Tensor, turns: float) -> torch.Tensor:
    # YIQ: rotate (I, Q) by the angle, keep luma.
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    angle = 2 * math.pi * turns
    c, s = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    m = torch.linalg.inv(to_yiq) @ rot @ to_yiq
    return torch.einsum("ij,jhw->ihw", m, image)


def random_crop(arrays: Sequence[torch.Tensor], size: int, rng: np.random.Generator,
                fills: Sequence[float | torch.Tensor], *, pad_at: str = "random") -> list[torch.Tensor]:
    """Crops the same random ``size`` x ``size`` window from each (..., H, W)
    tensor, padding with the matching fill (a number, or a tensor that
    broadcasts to (..., 1, 1), e.g. a per-channel colour) where the image is
    smaller. ``pad_at`` "random": a smaller image lands at a random position
    in the padded window (PSA's RandomCrop); "end": the image is padded at
    the bottom and right before the crop, so a smaller side starts at 0
    (deeplab-pytorch's _augmentation)."""
    if pad_at not in PAD_AT:
        raise ValueError(f"random_crop: pad_at must be one of {PAD_AT}, got {pad_at!r}")
    height, width = arrays[0].shape[-2:]
    ch, cw = min(size, height), min(size, width)
    top = int(rng.integers(0, height - ch + 1))
    left = int(rng.integers(0, width - cw + 1))
    dst_top = int(rng.integers(0, size - ch + 1)) if pad_at == "random" else 0
    dst_left = int(rng.integers(0, size - cw + 1)) if pad_at == "random" else 0
    out = []
    for array, fill in zip(arrays, fills):
        canvas = torch.as_tensor(fill, dtype=array.dtype).expand(*array.shape[:-2], size, size).clone()
        canvas[..., dst_top:dst_top + ch, dst_left:dst_left + cw] = array[..., top:top + ch, left:left + cw]
        out.append(canvas)
    return out


class TrainAugment:
    """The training transform of a stage: random rescale, horizontal flip,
    colour jitter, normalisation and a random square crop.

    Rescaling, at most one of:
        resize_long (MIN, MAX): long side uniform in MIN..MAX, aspect kept
            (PSA's and SC-CAM's RandomResizeLong);
        resize_short S: short side set to S, aspect kept;
        squash S: both sides set to S, the aspect ratio not kept (DRS's
            Resize(384): its transforms.py resizes to (size, size));
        scale (LOW, HIGH): both sides times a factor uniform in [LOW, HIGH]
            (rounded to the nearest pixel);
        scale_choices (s1, s2, ...): both sides times a factor drawn from
            the list, int(side * s) (deeplab-pytorch's _augmentation with
            SCALES 0.5, 0.75, 1.0, 1.25, 1.5).

    Called as ``augment(item, rng)`` on a dataset item dict (``image`` uint8
    (3, H, W), optional ``mask``/``target`` (H, W) label maps, optional
    float score maps (K, H, W) named in ``score_keys``); returns the item with
    ``image`` float32 (3, crop, crop), the label maps cropped alike (nearest
    resizing, 255 padding) and the score maps cropped alike (bilinear
    resizing, 0 padding: PSA's affinity-label scores). The image is padded
    with ``fill_rgb`` (0..255 RGB; default the ImageNet mean, 0 once
    normalised; deeplab-pytorch pads with its Caffe mean); ``pad_at`` as in
    :func:`random_crop`.
    """

    def __init__(self, crop: int, *, resize_long: tuple[int, int] | None = None,
                 resize_short: int | None = None, squash: int | None = None,
                 scale: tuple[float, float] | None = None, scale_choices: Sequence[float] | None = None,
                 flip: bool = True,
                 jitter: tuple[float, float, float, float] | None = (0.3, 0.3, 0.3, 0.1),
                 label_keys: Sequence[str] = ("mask",), score_keys: Sequence[str] = (),
                 fill_rgb: tuple[float, float, float] | None = None, pad_at: str = "random"):
        if sum(v is not None for v in (resize_long, resize_short, squash, scale, scale_choices)) > 1:
            raise ValueError("TrainAugment: give at most one of resize_long, resize_short, squash, scale "
                             "and scale_choices")
        if scale is not None and not 0 < scale[0] <= scale[1]:
            raise ValueError(f"TrainAugment: scale must be (low, high) with 0 < low <= high, got {scale}")
        if scale_choices is not None and (not scale_choices or any(not v > 0 for v in scale_choices)):
            raise ValueError(f"TrainAugment: scale_choices must be positive factors, got {scale_choices}")
        if crop < 1 or (squash is not None and squash < 1):
            raise ValueError(f"TrainAugment: crop and squash must be >= 1, got {crop} and {squash}")
        if pad_at not in PAD_AT:
            raise ValueError(f"TrainAugment: pad_at must be one of {PAD_AT}, got {pad_at!r}")
        self.crop = crop
        self.resize_long = resize_long
        self.resize_short = resize_short
        self.squash = squash
        self.scale = scale
        self.scale_choices = None if scale_choices is None else tuple(scale_choices)
        self.flip = flip
        self.jitter = jitter
        self.label_keys = tuple(label_keys)
        self.score_keys = tuple(score_keys)
        self.image_fill = 0.0 if fill_rgb is None else normalize(torch.tensor(fill_rgb).view(3, 1, 1))
        self.pad_at = pad_at

    def size(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int]:
        """(H', W') of the rescaled image, drawing from ``rng`` as needed."""
        if self.resize_long is not None:
            return scaled_size(height, width, long=int(rng.integers(self.resize_long[0],
                                                                    self.resize_long[1] + 1)))
        if self.resize_short is not None:
            return scaled_size(height, width, short=self.resize_short)
        if self.squash is not None:
            return self.squash, self.squash
        if self.scale is not None:
            factor = rng.uniform(*self.scale)
            return max(1, round(height * factor)), max(1, round(width * factor))
        if self.scale_choices is not None:
            factor = self.scale_choices[int(rng.integers(len(self.scale_choices)))]
            return max(1, int(height * factor)), max(1, int(width * factor))
        return height, width

    def __call__(self, item: dict, rng: np.random.Generator) -> dict:
        item = dict(item)
        image = item["image"].float()
        labels = {k: item[k] for k in self.label_keys if k in item}
        scores = {k: item[k].float() for k in self.score_keys if k in item}
        size = self.size(*image.shape[-2:], rng)
        image = resize(image, size)
        labels = {k: resize(v, size, label=True) for k, v in labels.items()}
        scores = {k: resize(v, size) for k, v in scores.items()}
        if self.flip and rng.random() < 0.5:
            image = image.flip(-1)
            labels = {k: v.flip(-1) for k, v in labels.items()}
            scores = {k: v.flip(-1) for k, v in scores.items()}
        if self.jitter is not None:
            image = colour_jitter(image, rng, *self.jitter)
        crops = random_crop([normalize(image), *labels.values(), *scores.values()], self.crop, rng,
                            [self.image_fill] + [VOID] * len(labels) + [0.0] * len(scores), pad_at=self.pad_at)
        item["image"] = crops[0]
        item.update(zip([*labels, *scores], crops[1:]))
        return item
