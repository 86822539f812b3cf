"""IRN's inter-pixel affinities from a class-boundary map (SPEC.md,
"AffinityNet and random walk", IRN variant; jiwoon-ahn/irn misc/indexing.py
and net/resnet50_irn.py).

IRN joins the same pixel pairs as AffinityNet (the forward offsets of
:func:`wsss_fast.pairs.offsets`: IRN's ``search_dirs`` follow the same rule)
and gives each pair the affinity ``1 - max boundary`` over the *path* between
its two pixels. The path of offset (dy, dx) is every grid point (y, x) of the
box spanned by (0, 0) and (dy, dx) whose distance to the line through them is
below one cell, ``(dy * x - dx * y)^2 < dy^2 + dx^2`` (IRN's
``PathIndex.get_search_paths_dst``); it holds both end points.

:func:`boundary_affinity` computes these affinities for every pixel and
offset on the shifted boundary map, in the layout of
:func:`wsss_fast.ops.affinity` ((B, P, H, W), channel k = offset k), so they
feed :func:`wsss_fast.ops.random_walk` and the pair labels of
:func:`wsss_fast.stages.affinity_labels.pair_labels` directly. It is
differentiable: the gradient of each affinity goes to the first path point
that holds the maximum (IRN takes the max with ``F.max_pool2d``, which does
the same), and only the index of that point is kept for the backward pass
(one byte per pair), not the (paths x pixels) stack IRN's autograd keeps.

:func:`boundary_random_walk` is IRN's random walk (``propagate_to_edge``)
on the sparse operator :func:`wsss_fast.ops.random_walk`. IRN builds the
N x N matrix A with A[i, j] = A[j, i] = the affinity of every pair inside the
image and 1 on the diagonal, raises it element-wise to beta, divides every
column by its sum and squares the result exp_times times, then multiplies
the maps (times 1 - boundary) by it: exactly the transition matrix of
``ops.random_walk`` (pairs both ways, self-affinity 1, columns normalised)
with border "all", applied as 2^exp_times stencil steps instead
(``tests/test_boundary.py`` checks it against :mod:`wsss_fast.reference.irn`).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import ops
from .pairs import check_radius, offsets

__all__ = ["boundary_affinity", "boundary_random_walk", "path_points", "paths"]


@functools.lru_cache(maxsize=None)
def path_points(dy: int, dx: int) -> tuple[tuple[int, int], ...]:
    """The (y, x) points of IRN's path from (0, 0) to (dy, dx), destination
    first: ordered by decreasing |y| + |x| (ties in row-major order), as
    IRN sorts them. (0, 1) gives ((0, 1), (0, 0)); (1, 1) all four corners."""
    if (dy, dx) == (0, 0):
        raise ValueError("path_points: the offset must not be (0, 0)")
    length_sq = dy * dy + dx * dx
    points = [(y, x) for y in range(min(0, dy), max(0, dy) + 1)
              for x in range(min(0, dx), max(0, dx) + 1)
              if (dy * x - dx * y) ** 2 < length_sq]
    return tuple(sorted(points, key=lambda p: -abs(p[0]) - abs(p[1])))


@functools.lru_cache(maxsize=None)
def paths(radius: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """The path of every forward offset of ``radius``, in offset order."""
    return tuple(path_points(dy, dx) for dy, dx in offsets(radius))


def _padded(boundary: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, H + m, W + 2m) with m = radius - 1: the map padded with 1 (IRN pads
    its boundary map with 1.0: outside the image counts as boundary) below,
    left and right, the only sides paths leave the image on (dy >= 0)."""
    m = radius - 1
    return F.pad(boundary[:, 0], (m, m, 0, m), value=1.0)


def _path_max(padded: torch.Tensor, radius: int, h: int, w: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(max, argmax) over each path: (B, P, H, W) values and uint8 indices
    into :func:`paths` (the first maximum), by element-wise updates along the
    path (a reduction over a stacked path dimension is far slower on CPU)."""
    m = radius - 1
    b = padded.shape[0]
    all_paths = paths(radius)
    top = padded.new_empty(b, len(all_paths), h, w)
    where = torch.zeros(b, len(all_paths), h, w, dtype=torch.uint8, device=padded.device)
    for k, points in enumerate(all_paths):
        value, index = top[:, k], where[:, k]
        y, x = points[0]
        value.copy_(padded[:, y:y + h, m + x:m + x + w])
        for i, (y, x) in enumerate(points[1:], start=1):
            candidate = padded[:, y:y + h, m + x:m + x + w]
            index.masked_fill_(candidate > value, i)
            torch.maximum(value, candidate, out=value)
    return top, where


class _BoundaryAffinity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, boundary, radius):
        b, _, h, w = boundary.shape
        top, where = _path_max(_padded(boundary, radius), radius, h, w)
        ctx.save_for_backward(where)
        ctx.radius = radius
        ctx.shape = boundary.shape
        return 1 - top

    @staticmethod
    def backward(ctx, grad):
        (where,) = ctx.saved_tensors
        radius = ctx.radius
        b, _, h, w = ctx.shape
        m = radius - 1
        padded = grad.new_zeros(b, h + m, w + 2 * m)
        for k, points in enumerate(paths(radius)):
            g = -grad[:, k]
            for i, (y, x) in enumerate(points):
                padded[:, y:y + h, m + x:m + x + w] += torch.where(where[:, k] == i, g, 0)
        return padded[:, None, :h, m:m + w], None


def boundary_affinity(boundary: torch.Tensor, radius: int) -> torch.Tensor:
    """IRN's pair affinities from a class-boundary map.

    Args:
        boundary: (B, 1, H, W) boundary probabilities in [0, 1] (IRN: the
            sigmoid of its edge branch, at stride 4), float32 or float64,
            any device and strides.
        radius: pair radius on that grid, 1..16 (IRN: 10 for training,
            5 for the random walk).

    Returns:
        (B, P, H, W) contiguous tensor of boundary's dtype, P =
        len(pair_offsets(radius)): entry [b, k, y, x] is 1 - the maximum of
        the boundary map over the path (:func:`path_points`) from (y, x) to
        (y + dy_k, x + dx_k); 0 where the path leaves the image (outside
        counts as boundary 1). Differentiable with respect to ``boundary``.
    """
    radius = check_radius(radius, "boundary_affinity")
    if not isinstance(boundary, torch.Tensor):
        raise TypeError(f"boundary_affinity: boundary must be a torch.Tensor, "
                        f"got {type(boundary).__name__}")
    if boundary.dim() != 4 or boundary.shape[1] != 1:
        raise ValueError(f"boundary_affinity: boundary must be a (B, 1, H, W) tensor, "
                         f"got shape {tuple(boundary.shape)}")
    if boundary.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"boundary_affinity: boundary must be float32 or float64, got {boundary.dtype}")
    if boundary.shape[-2] == 0 or boundary.shape[-1] == 0:
        raise ValueError(f"boundary_affinity: boundary must have H, W >= 1, got {tuple(boundary.shape)}")
    if boundary.numel() and not bool(((boundary >= 0) & (boundary <= 1)).all()):
        raise ValueError("boundary_affinity: boundary must hold probabilities in [0, 1] "
                         "(found values outside, or NaN)")
    return _BoundaryAffinity.apply(boundary, radius)


def boundary_random_walk(maps: torch.Tensor, boundary: torch.Tensor, radius: int = 5, beta: float = 10.0,
                         n_steps: int = 256, border: str = "all") -> torch.Tensor:
    """IRN's random walk (misc/indexing.py ``propagate_to_edge``) as sparse steps.

    Args:
        maps: (B, C, H, W) maps to propagate (IRN: the image's CAMs at
            stride 4, no background row); float32/float64 (CPU), float32 (CUDA).
        boundary: (B, 1, H, W) boundary probabilities in [0, 1], maps' dtype
            and device.
        radius: pair radius (IRN: 5).
        beta: affinity exponent (IRN: 10).
        n_steps: walk steps (IRN: 2^exp_times = 256).
        border: the pairs of the walk, "all" (IRN's: every pair inside the
            image) or "psa" (see :func:`wsss_fast.ops.random_walk`).

    Returns:
        (B, C, H, W): (maps * (1 - boundary)) @ T^n_steps per image, T being
        the column-normalised matrix of the affinities
        :func:`boundary_affinity` ^ beta (module docstring). Not differentiable.
    """
    if boundary.shape[0] != maps.shape[0] or boundary.shape[-2:] != maps.shape[-2:]:
        raise ValueError(f"boundary_random_walk: boundary {tuple(boundary.shape)} must be (B, 1, H, W) "
                         f"for maps {tuple(maps.shape)}")
    with torch.no_grad():
        aff = boundary_affinity(boundary, radius)
        return ops.random_walk((maps * (1 - boundary)).contiguous(), aff, radius, beta, n_steps, border)
