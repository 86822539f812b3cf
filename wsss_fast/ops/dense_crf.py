"""``wsss_fast.ops.dense_crf``: the dense CRF (Kraehenbuehl & Koltun) mean
field with the permutohedral lattice, in pydensecrf's formulation (SPEC.md,
"Dense CRF"; the formulation is spelled out in
:mod:`wsss_fast.reference.dense_crf`).

The compiled operator (csrc/ops.cpp) is ``torch.ops.wsss_fast.dense_crf``.
This module adds the parameter presets, its fake kernel and an autograd
registration that refuses to differentiate, and the user-facing
:func:`dense_crf` that checks its arguments (values included) and falls back
to the reference.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from .. import _backend
from ._register import register_inference_only
from ..reference import dense_crf as reference

__all__ = ["CRFParams", "PRESETS", "dense_crf", "resolve_params"]

_NOT_DIFFERENTIABLE = ("wsss_fast.ops.dense_crf is not differentiable (the references use it only "
                       "as post-processing); call it under torch.no_grad() or on detached inputs")


@dataclass(frozen=True)
class CRFParams:
    """Mean-field iterations and the two pairwise kernels: Gaussian on pixel
    positions (``gaussian_sxy`` pixels, Potts weight ``gaussian_compat``) and
    bilateral on positions and colours (``bilateral_sxy`` pixels,
    ``bilateral_srgb`` RGB levels, weight ``bilateral_compat``)."""
    iterations: int
    gaussian_sxy: float
    gaussian_compat: float
    bilateral_sxy: float
    bilateral_srgb: float
    bilateral_compat: float


#: SPEC.md, "Dense CRF": PSA's affinity labels, DeepLab's post-processing
#: (pos_xy 1, pos_w 3, bi_xy 67, bi_rgb 3, bi_w 4) and IRN's crf_inference_label.
PRESETS = {
    "psa": CRFParams(iterations=10, gaussian_sxy=3, gaussian_compat=3,
                     bilateral_sxy=80, bilateral_srgb=13, bilateral_compat=10),
    "deeplab": CRFParams(iterations=10, gaussian_sxy=1, gaussian_compat=3,
                         bilateral_sxy=67, bilateral_srgb=3, bilateral_compat=4),
    "irn": CRFParams(iterations=10, gaussian_sxy=3, gaussian_compat=3,
                     bilateral_sxy=50, bilateral_srgb=5, bilateral_compat=10),
}


def resolve_params(params: str | CRFParams) -> CRFParams:
    """A preset name ("psa", "deeplab", "irn") or a CRFParams -> CRFParams."""
    if isinstance(params, CRFParams):
        return params
    if params not in PRESETS:
        raise ValueError(f"unknown CRF preset {params!r}; presets: {sorted(PRESETS)}")
    return PRESETS[params]


def dense_crf(image: torch.Tensor, probs: torch.Tensor, params: str | CRFParams = "psa",
              num_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Dense CRF marginals of a batch of images.

    pydensecrf's model and mean field: unary -log(clip(probs, 1e-5, 1)); a
    Gaussian kernel on (x, y) / gaussian_sxy and a bilateral kernel on
    (x, y) / bilateral_sxy and (r, g, b) / bilateral_srgb, each symmetrically
    normalised, with Potts weights; ``iterations`` mean-field updates; every
    kernel applied through a permutohedral lattice built as pydensecrf builds
    it. The result matches ``pydensecrf`` (``DenseCRF2D`` with
    ``addPairwiseGaussian`` then ``addPairwiseBilateral``, default kernel and
    normalisation, ``inference``) up to float32 rounding.

    Args:
        image: (B, 3, H, W) uint8 RGB, H, W >= 1; any strides.
        probs: (B, K, H, W) float32 per-label scores in [0, 1] (softmax
            outputs, or PSA's [bg, CAMs] stack; they need not sum to 1), on
            image's device; K >= 1.
        params: preset name ("psa", "deeplab") or :class:`CRFParams`
            (iterations >= 0; sxy, srgb > 0; finite compats).
        num_labels: images with different label counts in one batch: None
            (every image uses all K channels) or a (B,) int64 tensor on
            image's device with 1 <= num_labels[b] <= K. Image b then uses
            only channels [0, num_labels[b]) of probs (pad the rest with
            anything in [0, 1]); its other output channels are 0.

    Returns:
        (B, K, H, W) float32 marginals, contiguous: each pixel's first
        num_labels[b] values sum to 1.

    Not differentiable: raises RuntimeError if grad mode is on and probs
    requires grad. Runs the compiled CPU kernel (threaded within an image
    and across images) or CUDA kernel, else the pure-PyTorch reference with a
    :class:`~wsss_fast.BackendWarning`.
    """
    params = _check(image, probs, params, num_labels)
    args = (image, probs, num_labels, int(params.iterations), float(params.gaussian_sxy),
            float(params.gaussian_compat), float(params.bilateral_sxy),
            float(params.bilateral_srgb), float(params.bilateral_compat))
    if not _backend.use_kernel("dense_crf", probs.device.type):
        return reference(*args)
    return torch.ops.wsss_fast.dense_crf(*args)


def _check(image, probs, params, num_labels) -> CRFParams:
    for name, t in (("image", image), ("probs", probs)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"dense_crf: {name} must be a torch.Tensor, got {type(t).__name__}")
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"dense_crf: image must be a 4-D (B, 3, H, W) RGB tensor, "
                         f"got shape {tuple(image.shape)}")
    if image.dtype != torch.uint8:
        raise TypeError(f"dense_crf: image must be uint8, got {image.dtype}")
    b, _, h, w = image.shape
    if probs.dim() != 4 or (probs.shape[0], probs.shape[2], probs.shape[3]) != (b, h, w):
        raise ValueError(f"dense_crf: probs must have shape (B, K, H, W) with B, H, W = {b}, {h}, "
                         f"{w} (those of image), got {tuple(probs.shape)}")
    if probs.shape[1] < 1:
        raise ValueError(f"dense_crf: probs must have K >= 1 labels, got shape {tuple(probs.shape)}")
    if h < 1 or w < 1:
        raise ValueError(f"dense_crf: image must have H >= 1 and W >= 1, got shape {tuple(image.shape)}")
    if probs.dtype != torch.float32:
        raise TypeError(f"dense_crf: probs must be float32, got {probs.dtype}")
    if probs.device != image.device:
        raise ValueError(f"dense_crf: probs must be on the device of image ({image.device}), "
                         f"got {probs.device}")
    if isinstance(params, str):
        if params not in PRESETS:
            raise ValueError(f"dense_crf: unknown CRF preset {params!r}; presets: {sorted(PRESETS)}")
        params = PRESETS[params]
    if not isinstance(params, CRFParams):
        raise TypeError(f"dense_crf: params must be a preset name or a CRFParams, "
                        f"got {type(params).__name__}")
    it = params.iterations
    if isinstance(it, bool) or not isinstance(it, numbers.Integral) or it < 0:
        raise ValueError(f"dense_crf: iterations must be an int >= 0, got {it!r}")
    for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb", "gaussian_compat",
                 "bilateral_compat"):
        v = getattr(params, name)
        ok = not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(v)
        if not ok or (not name.endswith("compat") and v <= 0):
            want = "a finite number" if name.endswith("compat") else "a finite number > 0"
            raise ValueError(f"dense_crf: {name} must be {want}, got {v!r}")
    if num_labels is not None:
        if not isinstance(num_labels, torch.Tensor):
            raise TypeError(f"dense_crf: num_labels must be a torch.Tensor or None, "
                            f"got {type(num_labels).__name__}")
        if num_labels.shape != (b,) or num_labels.dtype != torch.int64:
            raise ValueError(f"dense_crf: num_labels must be a (B,) = ({b},) int64 tensor, got "
                             f"shape {tuple(num_labels.shape)} {num_labels.dtype}")
        if num_labels.device != image.device:
            raise ValueError(f"dense_crf: num_labels must be on the device of image "
                             f"({image.device}), got {num_labels.device}")
    if torch.is_grad_enabled() and probs.requires_grad:
        raise RuntimeError(_NOT_DIFFERENTIABLE)
    if probs.device.type != "meta":
        if num_labels is not None and b and bool(((num_labels < 1) | (num_labels > probs.shape[1])).any()):
            raise ValueError(f"dense_crf: num_labels must be in [1, K = {probs.shape[1]}], "
                             f"got {num_labels.tolist()}")
        if probs.numel() and not bool(((probs >= 0) & (probs <= 1)).all()):
            raise ValueError("dense_crf: probs must be in [0, 1] (NaN is not)")
    return params


def _fake(image, probs, num_labels, iterations, gaussian_sxy, gaussian_compat, bilateral_sxy,
          bilateral_srgb, bilateral_compat):
    return probs.new_empty(probs.shape)


if _backend._C is not None:
    register_inference_only("dense_crf", _fake, _NOT_DIFFERENTIABLE)
