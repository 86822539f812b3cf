"""``wsss_fast.ops.affinity``: AffinityNet's pairwise affinities (SPEC.md,
"AffinityNet and random walk"), and ``pair_offsets``, the pairs they are for.

The compiled operators (csrc/ops.cpp) are ``torch.ops.wsss_fast.affinity`` and
its gradient ``affinity_backward``. This module adds their fake kernels and
autograd formula, and the user-facing :func:`affinity` that checks its
arguments and falls back to the reference.
"""
from __future__ import annotations

import torch

from .. import _backend
from ._checks import check_dtype
from ..pairs import check_radius, pair_count, pair_offsets
from ..reference import affinity as reference

__all__ = ["affinity", "pair_offsets"]

_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32,)


def affinity(features: torch.Tensor, radius: int) -> torch.Tensor:
    """AffinityNet affinities between each pixel and its forward neighbours.

    ``a[b, k, y, x] = exp(-mean_d |f[b, d, y, x] - f[b, d, y + dy_k, x + dx_k]|)``
    for the offsets (dy_k, dx_k) of :func:`pair_offsets` (radius), and 0 where
    the neighbour is outside the image. Values are in (0, 1] inside.

    Args:
        features: (B, D, H, W) feature map, D >= 1; float32/float64 on CPU,
            float32 on CUDA. Any strides.
        radius: pair radius in grid cells, 1..16 (PSA: 5, giving P = 34).

    Returns:
        (B, P, H, W) contiguous tensor of the features' dtype; channel k is the
        affinity of offset k, indexed by the source pixel (the layout
        :func:`random_walk` takes). Differentiable in features (first order),
        without a (B, P, D, H, W) intermediate. Where two features are equal,
        |.| has the subgradient 0 (as torch.abs), so such a channel passes no
        gradient through that pair.
    """
    radius = _check(features, radius)
    if not _backend.use_kernel("affinity", features.device.type):
        return reference(features, radius)
    return torch.ops.wsss_fast.affinity(features, radius)


def _check(features, radius) -> int:
    radius = check_radius(radius, "affinity")
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"affinity: features must be a torch.Tensor, got {type(features).__name__}")
    if features.dim() != 4:
        raise ValueError(f"affinity: features must be a 4-D (B, D, H, W) tensor, "
                         f"got shape {tuple(features.shape)}")
    check_dtype("affinity", "features", features, _CPU_DTYPES, _CUDA_DTYPES)
    if features.shape[1] < 1:
        raise ValueError(f"affinity: features must have D >= 1 channels, got shape "
                         f"{tuple(features.shape)}")
    return radius


def _register() -> None:
    """Fake kernels and autograd for the compiled operators."""

    @torch.library.register_fake("wsss_fast::affinity")
    def _(features, radius):
        b, _, h, w = features.shape
        return features.new_empty(b, pair_count(radius), h, w)

    @torch.library.register_fake("wsss_fast::affinity_backward")
    def _(grad_out, features, out, radius):
        return features.new_empty(features.shape)

    def setup(ctx, inputs, output):
        features, ctx.radius = inputs
        ctx.save_for_backward(features, output)

    def backward(ctx, grad_out):
        features, out = ctx.saved_tensors
        return torch.ops.wsss_fast.affinity_backward(grad_out, features, out, ctx.radius), None

    def no_double_backward(ctx, grad):
        raise RuntimeError("wsss_fast.ops.affinity: second-order gradients are not implemented")

    torch.library.register_autograd("wsss_fast::affinity", backward, setup_context=setup)
    torch.library.register_autograd("wsss_fast::affinity_backward", no_double_backward,
                                    setup_context=lambda ctx, inputs, output: None)


if _backend._C is not None:
    _register()
