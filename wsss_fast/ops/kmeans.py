"""``wsss_fast.ops.kmeans``: batched K-means with scikit-learn's Lloyd semantics.

The compiled operator (declared in csrc/ops.cpp) is
``torch.ops.wsss_fast.kmeans(x, groups, num_groups, k, n_init, max_iter, tol,
seed, init) -> (labels, centroids, inertia, n_iter)``. This module adds its
fake (shape) kernel and the user-facing :func:`kmeans`, which checks its
arguments and falls back to :func:`wsss_fast.reference.kmeans`.
"""
from __future__ import annotations

import math
import numbers

import torch

from .. import _backend
from ..reference import kmeans as reference
from ..reference.kmeans import INITS, KMeansResult

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT64 = (-(1 << 63), (1 << 63) - 1)


def kmeans(x: torch.Tensor, k: int, groups: torch.Tensor | None = None, n_init: int = 10,
           max_iter: int = 300, tol: float = 1e-4, seed: int = 0, init: str = "k-means++",
           num_groups: int | None = None) -> KMeansResult:
    """K-means of every group of points, all groups and all n_init runs in one call.

    Each group is clustered independently, as scikit-learn's
    ``KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter, tol=tol,
    init=init, algorithm="lloyd")`` would (wsss_fast/reference/kmeans.py has
    the details): inertia is the sum of squared Euclidean distances of the
    points to their centroid; convergence uses scikit-learn's relative
    tolerance (``tol`` times the mean per-feature variance of the group) on the
    summed squared centre shift, or stops as soon as no label changes; the run
    with the lowest inertia of ``n_init`` wins; seeding is greedy k-means++
    with ``2 + int(log(k))`` candidates per centre.

    Args:
        x: (N, D) points, D >= 1, finite. float32/float64 are clustered in their
            dtype (distances through ||x||^2 - 2 x.c + ||c||^2 with the dot
            products in that dtype, sums and inertia in float64);
            float16/bfloat16 are clustered in float32.
        k: clusters per group, >= 1.
        groups: optional (N,) integer tensor on x's device, the group of each
            point in [0, num_groups); None puts all points in group 0.
        n_init: runs per group (different seeds), >= 1.
        max_iter: Lloyd iterations per run, >= 1.
        tol: relative tolerance, >= 0 (0: stop only when no label changes).
        seed: any integer in the int64 range. The result is a deterministic
            function of (points of the group, group index, seed, settings) on a
            given device; a group's result does not depend on the other groups.
        init: "k-means++" or "random" (k distinct points uniformly).
        num_groups: G; default ``groups.max() + 1`` (1 without groups). Groups
            with no points are allowed.

    Returns:
        :class:`~wsss_fast.reference.kmeans.KMeansResult` with ``labels`` (N,)
        int64 (the cluster of each point within its group), ``centroids``
        (G, k, D) in x's dtype (float32 for float16/bfloat16 input),
        ``inertia`` (G,) float64 in squared units of x, ``n_iter`` (G,) int64
        (Lloyd iterations of the best run).

    Degenerate groups (never an error):
        * no points: centroids NaN, inertia 0, n_iter 0;
        * fewer distinct points than k (k >= group size included): every
          distinct point gets a cluster of its own, the inertia is 0, and the
          remaining clusters get no point, their centroids repeating used
          ones (k-means++ seeds them on already chosen points; equal centres
          tie to the lowest cluster index);
        * an empty cluster during the iterations takes the point farthest from
          its centre, as in scikit-learn.

    Not differentiable (the labels are discrete; x is detached). Runs the
    compiled CPU or CUDA kernel, else the pure-PyTorch reference with a
    :class:`~wsss_fast.BackendWarning`.
    """
    num_groups = _check(x, k, groups, n_init, max_iter, tol, seed, init, num_groups)
    work = x.detach()
    if work.dtype in (torch.float16, torch.bfloat16):
        work = work.float()
    if groups is None:
        groups = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    groups = groups.long()
    if not _backend.use_kernel("kmeans", x.device.type):
        return reference(work, k, groups, n_init, max_iter, tol, seed, init, num_groups)
    out = torch.ops.wsss_fast.kmeans(work, groups, num_groups, k, n_init, max_iter, float(tol),
                                     seed, init)
    return KMeansResult(*out)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check(x, k, groups, n_init, max_iter, tol, seed, init, num_groups) -> int:
    """Raises on a bad argument; returns the number of groups."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"kmeans: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"kmeans: x must be a 2-D (N, D) tensor, got shape {tuple(x.shape)}")
    if x.dtype not in _DTYPES:
        raise TypeError(f"kmeans: x must be a floating-point tensor, got {x.dtype}")
    n, d = x.shape
    if d < 1:
        raise ValueError(f"kmeans: x must have at least one feature (D >= 1), got shape {tuple(x.shape)}")
    for name, value in (("k", k), ("n_init", n_init), ("max_iter", max_iter)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"kmeans: {name} must be an int >= 1, got {value!r}")
    if not isinstance(tol, numbers.Real) or isinstance(tol, bool) or not math.isfinite(tol) or tol < 0:
        raise ValueError(f"kmeans: tol must be a finite float >= 0, got {tol!r}")
    if not _is_int(seed) or not _INT64[0] <= seed <= _INT64[1]:
        raise ValueError(f"kmeans: seed must be an int in the int64 range, got {seed!r}")
    if init not in INITS:
        raise ValueError(f"kmeans: init must be one of {INITS}, got {init!r}")
    if num_groups is not None and (not _is_int(num_groups) or num_groups < 0):
        raise ValueError(f"kmeans: num_groups must be an int >= 0, got {num_groups!r}")
    if groups is None:
        num_groups = 1 if num_groups is None else num_groups
    else:
        num_groups = _check_groups(groups, x, num_groups)
    if n > 0 and num_groups < 1:
        raise ValueError("kmeans: num_groups must be >= 1 when x has points")
    if n > 0:
        lo, hi = torch.aminmax(x.detach())  # NaN propagates
        if not (math.isfinite(lo.item()) and math.isfinite(hi.item())):
            raise ValueError("kmeans: x must be finite, but it holds NaN or infinity")
    return num_groups


def _check_groups(groups, x, num_groups) -> int:
    if not isinstance(groups, torch.Tensor):
        raise TypeError(f"kmeans: groups must be a torch.Tensor or None, got {type(groups).__name__}")
    if groups.shape != (x.shape[0],):
        raise ValueError(f"kmeans: groups must have shape (N,) = ({x.shape[0]},), got {tuple(groups.shape)}")
    if groups.dtype.is_floating_point or groups.dtype.is_complex or groups.dtype == torch.bool:
        raise TypeError(f"kmeans: groups must be an integer tensor, got {groups.dtype}")
    if groups.device != x.device:
        raise ValueError(f"kmeans: groups must be on the device of x ({x.device}), got {groups.device}")
    if groups.numel() == 0:
        return 0 if num_groups is None else num_groups
    lo, hi = (int(v) for v in torch.aminmax(groups))
    if num_groups is None:
        num_groups = hi + 1
    if lo < 0 or hi >= num_groups:
        raise ValueError(f"kmeans: groups must lie in [0, num_groups) = [0, {num_groups}), "
                         f"got values in [{lo}, {hi}]")
    return num_groups


def _register() -> None:
    """Fake kernel of the compiled operator (shapes only; no autograd)."""

    @torch.library.register_fake("wsss_fast::kmeans")
    def _(x, groups, num_groups, k, n_init, max_iter, tol, seed, init):
        n, d = x.shape
        return (x.new_empty(n, dtype=torch.long), x.new_empty(num_groups, k, d),
                x.new_empty(num_groups, dtype=torch.float64),
                x.new_empty(num_groups, dtype=torch.long))


if _backend._C is not None:
    _register()
