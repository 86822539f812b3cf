"""``wsss_fast.ops.random_walk``: PSA's random walk over the affinity graph
(SPEC.md, "AffinityNet and random walk") as n_steps sparse stencil steps.

The compiled operator (csrc/ops.cpp) is ``torch.ops.wsss_fast.random_walk``.
This module adds its fake kernel and an autograd registration that refuses to
differentiate, and the user-facing :func:`random_walk` that checks its
arguments (values included) and falls back to the reference.
"""
from __future__ import annotations

import math
import numbers

import torch

from .. import _backend
from ._checks import check_dtype
from ._register import register_inference_only
from ..pairs import BORDERS, check_radius, pair_count
from ..reference import random_walk as reference

__all__ = ["random_walk"]

STEPS_PER_CALL = 64  # steps per operator call (interruptible between calls)
_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32,)
_NOT_DIFFERENTIABLE = ("wsss_fast.ops.random_walk is not differentiable (PSA and IRN use it "
                       "only at inference); call it under torch.no_grad() or on detached inputs")


def random_walk(cam: torch.Tensor, aff: torch.Tensor, radius: int, beta: float = 8.0,
                n_steps: int = 256, border: str = "all") -> torch.Tensor:
    """Propagates class maps along the affinities: ``cam @ T^n_steps`` per image.

    T is PSA's transition matrix over the N = H * W pixels: A[i, j] =
    aff^beta for each counted pair (source i, target j = i + offset) and also
    A[j, i] (symmetric), A[i, i] = 1, and T = A with each column divided by
    its sum. Computed as n_steps sparse steps of the (2P + 1)-point stencil
    (69 points at radius 5), never as an N x N matrix: O(N) memory.

    Args:
        cam: (B, C, H, W) maps to propagate (PSA: 21 channels at stride 8, the
            background row included); float32/float64 on CPU, float32 on CUDA.
            Finite. Any strides.
        aff: (B, P, H, W) affinities from :func:`affinity` with the same
            radius (P = len(pair_offsets(radius))), dtype and device of cam;
            finite and >= 0. Channel k at (y, x) is the pair from (y, x) to
            (y + dy_k, x + dx_k); values whose target is outside the image are
            ignored.
        radius: pair radius, 1..16 (PSA: 5).
        beta: exponent of the affinities, > 0 (PSA: 8, IRN: 10).
        n_steps: number of steps t >= 0 (PSA: 256 = 2^logt, logt = 8); 0
            returns a copy of cam.
        border: "all" counts every pair with both pixels in the image (the
            clean definition); "psa" drops the pairs PSA's index construction
            drops, those whose source lies within radius - 1 of the left, right
            or bottom border (y > H - radius, x < radius - 1 or
            x > W - radius), to reproduce PSA's output.

    Returns:
        (B, C, H, W) contiguous tensor of cam's dtype: each output pixel is a
        convex combination of the input maps.

    Not differentiable: raises RuntimeError if grad mode is on and cam or aff
    requires grad. Interruptible: the steps run as operator calls of
    :data:`STEPS_PER_CALL` steps each, so Ctrl-C stops a long walk.
    """
    radius, border = _check(cam, aff, radius, beta, n_steps, border)
    if not _backend.use_kernel("random_walk", cam.device.type):
        return reference(cam, aff, radius, float(beta), int(n_steps), border)
    # Chunks of STEPS_PER_CALL steps: Python sees Ctrl-C between calls, and
    # the steps are the same arithmetic as one call (the operator rebuilds the
    # same transition weights from aff each call), so the result is identical.
    out = torch.ops.wsss_fast.random_walk(cam, aff, radius, float(beta), min(int(n_steps), STEPS_PER_CALL),
                                          border)
    for done in range(STEPS_PER_CALL, int(n_steps), STEPS_PER_CALL):
        out = torch.ops.wsss_fast.random_walk(out, aff, radius, float(beta),
                                              min(int(n_steps) - done, STEPS_PER_CALL), border)
    return out


def _check(cam, aff, radius, beta, n_steps, border) -> tuple[int, str]:
    radius = check_radius(radius, "random_walk")
    for name, t in (("cam", cam), ("aff", aff)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"random_walk: {name} must be a torch.Tensor, got {type(t).__name__}")
    if cam.dim() != 4:
        raise ValueError(f"random_walk: cam must be a 4-D (B, C, H, W) tensor, "
                         f"got shape {tuple(cam.shape)}")
    check_dtype("random_walk", "cam", cam, _CPU_DTYPES, _CUDA_DTYPES)
    b, _, h, w = cam.shape
    expected = (b, pair_count(radius), h, w)
    if tuple(aff.shape) != expected:
        raise ValueError(f"random_walk: aff must have shape (B, P, H, W) = {expected} for "
                         f"radius {radius} (P = len(pair_offsets(radius))), got {tuple(aff.shape)}")
    if aff.dtype != cam.dtype:
        raise TypeError(f"random_walk: aff must have the dtype of cam ({cam.dtype}), got {aff.dtype}")
    if aff.device != cam.device:
        raise ValueError(f"random_walk: aff must be on the device of cam ({cam.device}), "
                         f"got {aff.device}")
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not (
            math.isfinite(beta) and beta > 0):
        raise ValueError(f"random_walk: beta must be a finite number > 0, got {beta!r}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, numbers.Integral) or n_steps < 0:
        raise ValueError(f"random_walk: n_steps must be an int >= 0, got {n_steps!r}")
    if border not in BORDERS:
        raise ValueError(f"random_walk: border must be one of {BORDERS}, got {border!r}")
    if torch.is_grad_enabled() and (cam.requires_grad or aff.requires_grad):
        raise RuntimeError(_NOT_DIFFERENTIABLE)
    if cam.device.type != "meta":
        if not bool(torch.isfinite(cam).all()):
            raise ValueError("random_walk: cam must be finite, found NaN or infinity")
        if not bool(torch.isfinite(aff).all()):
            raise ValueError("random_walk: aff must be finite, found NaN or infinity")
        if bool((aff < 0).any()):
            raise ValueError("random_walk: aff must be >= 0 (affinities are in [0, 1]), "
                             "found negative values")
    return radius, border


def _fake(cam, aff, radius, beta, n_steps, border):
    return cam.new_empty(cam.shape)


if _backend._C is not None:
    register_inference_only("random_walk", _fake, _NOT_DIFFERENTIABLE)
