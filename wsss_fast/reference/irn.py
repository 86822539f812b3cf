"""IRN's own formulation of its affinities and random walk, written out as
IRN computes them (jiwoon-ahn/irn misc/indexing.py: ``PathIndex``,
``edge_to_affinity``, ``affinity_sparse2dense``, ``to_transition_matrix``,
``propagate_to_edge``), independently of :mod:`wsss_fast.boundary` and
:mod:`wsss_fast.pairs`: the ground truth of the tests and "IRN's dense way"
of the benchmark.

IRN's layout differs from ours: its directions are grouped by path length
(:class:`PathIndex` ``directions``), and its pairs are indexed by flat pixel
indices of a grid whose sources are cropped (rows < H - r + 1, columns
r - 1 .. W - r; r = ceil(radius)).

* :func:`edge_to_affinity`: (n_dirs, n_src) affinities 1 - max boundary over
  each path, in IRN's direction order.
* :func:`dense_affinity`: the N x N matrix IRN builds from them: the pair
  entries both ways and 1 on the diagonal.
* :func:`transition_power`: aff^beta, columns normalised to sum 1, squared
  ``exp_times`` times: T^(2^exp_times).
* :func:`propagate_to_edge`: IRN's random walk of maps (C, H, W) on a
  boundary map (H, W): boundary padded with 1 (radius columns left and right,
  radius rows below), path index of the padded grid, dense matrix cropped back
  to the image, maps times (1 - boundary), then maps @ T^(2^exp_times).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def search_directions(radius: float) -> list[tuple[int, int]]:
    """IRN's search directions (dy, dx): dy = 0 with dx = 1 .. r - 1, then
    dy = 1 .. r - 1 with -(r - 1) <= dx <= r - 1 and dx^2 + dy^2 < radius^2."""
    r = int(math.ceil(radius))
    dirs = [(0, dx) for dx in range(1, r)]
    dirs += [(dy, dx) for dy in range(1, r) for dx in range(-r + 1, r) if dx * dx + dy * dy < radius ** 2]
    return dirs


def path_coords(direction: tuple[int, int]) -> list[tuple[int, int]]:
    """Grid points of the box from (0, 0) to ``direction`` closer than one
    cell to the line through both, sorted by decreasing |y| + |x| (stable)."""
    dy, dx = direction
    norm = dy * dy + dx * dx
    coords = []
    for y in range(min(0, dy), max(0, dy) + 1):
        for x in range(min(0, dx), max(0, dx) + 1):
            if (dy * x - dx * y) ** 2 / norm < 1:
                coords.append((y, x))
    coords.sort(key=lambda c: -abs(c[0]) - abs(c[1]))
    return coords


class PathIndex:
    """IRN's ``PathIndex`` for one grid size (H, W).

    Attributes:
        radius, floor: the radius and r - 1 = ceil(radius) - 1, the crop of
            the sources.
        directions: (dy, dx) of every direction, grouped by path length
            (shortest paths first), IRN's channel order.
        groups: one int64 tensor (n_dirs_of_that_length, length, n_src) per
            path length: the flat index of every path point of every source.
        src: (n_src,) flat indices of the sources (rows 0 .. H - floor - 1,
            columns floor .. W - floor - 1, row-major).
        dst: (n_dirs, n_src) flat indices of the destinations.
    """

    def __init__(self, radius: float, size: tuple[int, int]):
        self.radius = radius
        self.floor = int(math.ceil(radius)) - 1
        height, width = size
        by_length: dict[int, list[list[tuple[int, int]]]] = {}
        for direction in search_directions(radius):
            coords = path_coords(direction)
            by_length.setdefault(len(coords), []).append(coords)
        flat = torch.arange(height * width).view(height, width)
        rows, cols = height - self.floor, width - 2 * self.floor
        f = self.floor
        self.directions, self.groups = [], []
        for length in sorted(by_length):
            group = []
            for coords in by_length[length]:
                self.directions.append(coords[0])
                group.append(torch.stack([flat[y:y + rows, f + x:f + x + cols].reshape(-1)
                                          for y, x in coords]))
            self.groups.append(torch.stack(group))
        self.src = flat[:rows, f:f + cols].reshape(-1)
        self.dst = torch.cat([g[:, 0] for g in self.groups])


def edge_to_affinity(edge: torch.Tensor, index: PathIndex) -> torch.Tensor:
    """(n_dirs, n_src) affinities 1 - max of ``edge`` (H, W) over each path."""
    flat = edge.reshape(-1)
    return torch.cat([1 - flat[group].amax(1) for group in index.groups])


def dense_affinity(aff: torch.Tensor, index: PathIndex, n: int) -> torch.Tensor:
    """IRN's ``affinity_sparse2dense``: (n, n) with A[src, dst] = A[dst, src]
    = aff and 1 on the diagonal."""
    dense = aff.new_zeros(n, n)
    src = index.src.expand_as(index.dst)
    dense[src.reshape(-1), index.dst.reshape(-1)] = aff.reshape(-1)
    dense[index.dst.reshape(-1), src.reshape(-1)] = aff.reshape(-1)
    dense.fill_diagonal_(1)
    return dense


def transition_power(dense: torch.Tensor, beta: float, exp_times: int) -> torch.Tensor:
    """IRN's ``to_transition_matrix``: dense^beta with columns normalised to
    sum 1, then squared ``exp_times`` times (T^(2^exp_times))."""
    scaled = dense.pow(beta)
    t = scaled / scaled.sum(0, keepdim=True)
    for _ in range(exp_times):
        t = t @ t
    return t


def padded_affinity(edge: torch.Tensor, radius: int) -> torch.Tensor:
    """The (N, N) affinity matrix of an (H, W) boundary map as IRN's
    ``propagate_to_edge`` builds it: on the map padded with 1 (``radius``
    columns left and right, ``radius`` rows below), then cropped to the
    image's N = H * W pixels."""
    h, w = edge.shape
    hp, wp = h + radius, w + 2 * radius
    padded = F.pad(edge, (radius, radius, 0, radius), value=1.0)
    index = PathIndex(radius, (hp, wp))
    dense = dense_affinity(edge_to_affinity(padded, index), index, hp * wp)
    dense = dense.view(hp, wp, hp, wp)[:h, radius:radius + w, :h, radius:radius + w]
    return dense.reshape(h * w, h * w)


def propagate_to_edge(x: torch.Tensor, edge: torch.Tensor, radius: int = 5, beta: float = 10.0,
                      exp_times: int = 8) -> torch.Tensor:
    """IRN's random walk: maps ``x`` (C, H, W) on boundary map ``edge`` (H, W)
    -> (C, H, W) = (x * (1 - edge)) @ T^(2^exp_times). Dense: O(N^2) memory,
    O(N^3 exp_times) work."""
    c, h, w = x.shape
    t = transition_power(padded_affinity(edge, radius), beta, exp_times)
    return ((x * (1 - edge)).reshape(c, h * w) @ t).view(c, h, w)
