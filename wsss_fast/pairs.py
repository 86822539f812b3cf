"""Pixel pairs of AffinityNet and its random walk (SPEC.md, "AffinityNet and
random walk").

A pair joins a *source* pixel (y, x) to the *target* (y + dy, x + dx) for one
of the forward offsets of :func:`pair_offsets`; every forward pair also counts
backward in the random walk. Affinity maps are (B, P, H, W) tensors whose
entry [b, k, y, x] belongs to the pair with source (y, x) and offset k.
"""
from __future__ import annotations

import functools
import numbers

import torch

#: Largest radius the operators accept (P = 396 offsets at radius 16).
MAX_RADIUS = 16

#: The border rules of the random walk: "all" counts every pair whose two
#: pixels lie in the image; "psa" also drops the pairs PSA's index
#: construction drops (sources within radius - 1 of the left, right and
#: bottom borders).
BORDERS = ("all", "psa")


def check_radius(radius, op: str) -> int:
    """Returns radius as an int; TypeError/ValueError naming ``op`` otherwise."""
    if isinstance(radius, bool) or not isinstance(radius, numbers.Integral):
        raise TypeError(f"{op}: radius must be an int, got {type(radius).__name__}")
    if not 1 <= radius <= MAX_RADIUS:
        raise ValueError(f"{op}: radius must be in [1, {MAX_RADIUS}], got {radius}")
    return int(radius)


@functools.lru_cache(maxsize=None)
def offsets(radius: int) -> tuple[tuple[int, int], ...]:
    """The forward offsets of :func:`pair_offsets` as a tuple of (dy, dx)."""
    result = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        for dx in range(-(radius - 1), radius):
            if dx * dx + dy * dy < radius * radius:
                result.append((dy, dx))
    return tuple(result)


def pair_offsets(radius: int) -> torch.Tensor:
    """The forward pair offsets of PSA's AffinityNet, in PSA's order.

    Args:
        radius: pairs join pixels closer than ``radius`` grid cells
            (Euclidean); 1 <= radius <= 16. PSA uses 5.

    Returns:
        (P, 2) int64 CPU tensor of (dy, dx) offsets, in this order: first
        dy = 0 with dx = 1, ..., radius - 1; then for dy = 1, ..., radius - 1
        the dx = -(radius - 1), ..., radius - 1 (ascending) with
        dx^2 + dy^2 < radius^2. Row k is the offset of channel k of an affinity
        map. Radius 5 gives P = 34, radius 2 gives 4, radius 1 gives 0.
    """
    radius = check_radius(radius, "pair_offsets")
    return torch.tensor(offsets(radius), dtype=torch.int64).reshape(-1, 2)


def pair_count(radius: int) -> int:
    """P, the number of forward offsets of :func:`pair_offsets`."""
    return len(offsets(radius))


def target_inside(height: int, width: int, dy: int, dx: int,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W) bool: the target (y + dy, x + dx) of source (y, x) is in the image."""
    ys = torch.arange(height, device=device)[:, None] + dy
    xs = torch.arange(width, device=device)[None, :] + dx
    return (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)


def counted_sources(height: int, width: int, radius: int, dy: int, dx: int, border: str,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W) bool: the pair from (y, x) with offset (dy, dx) counts in the walk.

    With border="all" that is every pair whose target is in the image. With
    border="psa" the source must also lie outside PSA's band: y <= H - radius
    and radius - 1 <= x <= W - radius (its targets are then always inside).
    """
    mask = target_inside(height, width, dy, dx, device)
    if border == "psa":
        m = radius - 1
        ys = torch.arange(height, device=device)[:, None]
        xs = torch.arange(width, device=device)[None, :]
        mask = mask & (ys < height - m) & (xs >= m) & (xs < width - m)
    return mask
