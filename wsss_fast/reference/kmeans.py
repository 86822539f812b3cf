"""Batched K-means (Lloyd, scikit-learn semantics) in pure PyTorch: the ground
truth of the compiled ``wsss_fast::kmeans`` kernels and their fallback.

The algorithm, shared exactly by the C++ and CUDA kernels (SPEC.md, "SC-CAM";
scikit-learn's ``KMeans(algorithm="lloyd")``):

* Every group is clustered independently. Its points are centred on their
  mean (as scikit-learn does, for accurate distances); centroids are reported
  back in the original coordinates.
* Tolerance: ``tol`` times the mean over features of the group's per-feature
  variance. A run stops when its labels no longer change ("strict
  convergence") or when the summed squared centre shift of an iteration is
  ``<= tol``; in the latter case, and after ``max_iter`` iterations, one last
  assignment makes the labels match the final centroids.
* Seeding: greedy k-means++ with ``2 + int(log(k))`` candidates per centre,
  sampled with probability proportional to the squared distance to the
  nearest chosen centre; the candidate that lowers the potential most wins.
  ``init="random"``: k distinct points drawn uniformly (Floyd's algorithm).
* Empty clusters after an assignment get the points farthest from their
  assigned centre (farthest first, ties to the lower point index), moved out of
  their old cluster, as scikit-learn does; when every point sits on its centre
  (fewer distinct points than k) nothing is moved. A cluster still empty gets
  the centre of the largest cluster (lowest index on ties).
* Best of ``n_init`` runs by inertia: the first run within a relative 1e-9
  of the lowest inertia (runs that reach the same partition differ only by
  rounding; scikit-learn keeps the earlier of two runs with the same
  clustering).

Random numbers come from a counter-based generator (splitmix64 of seed, group,
run and draw index), so a group's result depends only on its own points, the
seed and the settings, on every device and in every implementation.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F


class KMeansResult(NamedTuple):
    """Result of :func:`wsss_fast.ops.kmeans` for G groups of points in D dims.

    labels: (N,) int64, the cluster of each point within its group, in [0, k).
    centroids: (G, k, D), the best run's centres (NaN for an empty group).
    inertia: (G,) float64, sum of squared distances of the group's points to
        their centroid (0 for an empty group).
    n_iter: (G,) int64, Lloyd iterations of the best run (0 for an empty group).
    """

    labels: torch.Tensor
    centroids: torch.Tensor
    inertia: torch.Tensor
    n_iter: torch.Tensor


INITS = ("k-means++", "random")
BEST_RTOL = 1e-9


def n_local_trials(k: int) -> int:
    """Candidates per k-means++ centre: scikit-learn's 2 + int(log(k))."""
    return 2 + int(math.log(k))


# ------------------------------------------------------------------ random numbers
_U64 = np.uint64
_KEY = 0x243F6A8885A308D3
_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (arithmetic modulo 2**64)."""
    with np.errstate(over="ignore"):
        z = z ^ (z >> _U64(30))
        z = z * _U64(0xBF58476D1CE4E5B9)
        z = z ^ (z >> _U64(27))
        z = z * _U64(0x94D049BB133111EB)
        return z ^ (z >> _U64(31))


def uniforms(seed: int, group: int, run: int, count: int) -> np.ndarray:
    """Draws 0..count-1 of the stream of (seed, group, run): float64 in [0, 1).

    Draw i is ``(mix64(key + (i + 1) * golden) >> 11) * 2**-53`` with
    ``key = mix64(mix64(mix64(seed ^ K) ^ group) ^ run)``; seed is taken
    modulo 2**64. The C++ kernels compute the same numbers.
    """
    mask = (1 << 64) - 1
    key = _mix64(np.array([(seed & mask) ^ _KEY], dtype=np.uint64))
    key = _mix64(key ^ _U64(group))
    key = _mix64(key ^ _U64(run))
    with np.errstate(over="ignore"):
        counters = (np.arange(1, count + 1, dtype=np.uint64) * _U64(_GOLDEN)) + key
    return (_mix64(counters) >> _U64(11)).astype(np.float64) * 2.0 ** -53


def random_init_indices(seed: int, group: int, run: int, n: int, k: int) -> list[int]:
    """k point indices in [0, n) for init="random": min(n, k) distinct ones by
    Floyd's algorithm (draw j picks t = floor(u * (n - m + j + 1))), then copies
    of the first when n < k."""
    m = min(n, k)
    u = uniforms(seed, group, run, m)
    chosen: list[int] = []
    taken: set[int] = set()
    for j, i in enumerate(range(n - m, n)):
        t = min(int(u[j] * (i + 1)), i)
        pick = i if t in taken else t
        taken.add(pick)
        chosen.append(pick)
    return chosen + [chosen[0]] * (k - m)


# ------------------------------------------------------------------ one group
def _sq_dist(xc: torch.Tensor, xn: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(M, n) float64 squared distances ||x_index[m] - x_i||^2 through the
    expansion ||x||^2 - 2 x.y + ||y||^2 (dot products in the dtype of x),
    clamped at 0."""
    return (xn[None] + xn[index][:, None] - 2 * (xc[index] @ xc.T).double()).clamp_min(0)


def _kmeanspp(xc, xn, k, n_init, seed, group):
    """(R, k, D) k-means++ seeds of the R = n_init runs of one group."""
    n = xc.shape[0]
    trials = n_local_trials(k)
    runs = torch.arange(n_init, device=xc.device)
    u = torch.from_numpy(np.stack([uniforms(seed, group, r, 1 + (k - 1) * trials)
                                   for r in range(n_init)])).to(xc.device)
    centers = xc.new_empty(n_init, k, xc.shape[1])
    first = (u[:, 0] * n).long().clamp(max=n - 1)
    centers[:, 0] = xc[first]
    closest = _sq_dist(xc, xn, first)                          # (R, n)
    for c in range(1, k):
        cs = closest.cumsum(1)
        values = u[:, 1 + (c - 1) * trials:1 + c * trials] * cs[:, -1:]
        cand = torch.searchsorted(cs, values).clamp(max=n - 1)  # (R, T)
        dist = _sq_dist(xc, xn, cand.flatten()).view(n_init, trials, n)
        dist = torch.minimum(dist, closest[:, None])
        pots = dist.sum(2)
        best = pots.argmin(1)
        closest = dist[runs, best]
        centers[:, c] = xc[cand[runs, best]]
    return centers


def _assign(xc, xn, centers):
    """Labels (A, n) and squared distances (A, n) to the nearest of each run's
    centres (A, k, D); ties go to the lower cluster index."""
    a, k, _ = centers.shape
    cn = (centers.double() ** 2).sum(2)                            # (A, k)
    dots = (xc @ centers.reshape(a * k, -1).T).double().view(-1, a, k)
    score = cn[None] - 2 * dots                                    # (n, A, k)
    best, labels = score.min(2)
    return labels.T.contiguous(), (xn[:, None] + best).clamp_min(0).T


def _update(xc, labels, dist, k):
    """New centres (A, k, D) of the runs from their labels (A, n): means of the
    clusters, in float64 then rounded to the dtype of x, after relocating empty
    clusters (module docstring)."""
    onehot = F.one_hot(labels, k).double()                         # (A, n, k)
    sums = onehot.transpose(1, 2) @ xc.double()                    # (A, k, D)
    counts = onehot.sum(1)                                         # (A, k)
    for a in (counts == 0).any(1).nonzero().flatten().tolist():
        if float(dist[a].max()) == 0.0:
            continue
        empty = (counts[a] == 0).nonzero().flatten().tolist()
        far = torch.sort(dist[a], descending=True, stable=True).indices.tolist()
        for j, p in zip(empty, far):
            old = int(labels[a, p])
            sums[a, old] -= xc[p].double()
            counts[a, old] -= 1
            sums[a, j] = xc[p].double()
            counts[a, j] = 1
    new = (sums / counts.clamp_min(1)[..., None]).to(xc.dtype)
    for a in (counts == 0).any(1).nonzero().flatten().tolist():
        empty = counts[a] == 0
        new[a, empty] = new[a, int(counts[a].argmax())]
    return new


def cluster_group(x: torch.Tensor, k: int, n_init: int, max_iter: int, tol: float,
                  seed: int, init: str, group: int):
    """K-means of the points x (n, D), n >= 1, with n_init runs in lockstep.

    Returns (labels (n,) int64, centroids (k, D) in the dtype of x,
    inertia float, n_iter int) of the best run.
    """
    n, d = x.shape
    mean = x.sum(0) / n
    xc = x - mean
    xn = torch.linalg.vector_norm(xc, dim=1).double() ** 2
    tol_abs = tol * float(xn.sum()) / (n * d)
    if init == "k-means++":
        centers = _kmeanspp(xc, xn, k, n_init, seed, group)
    else:
        index = [random_init_indices(seed, group, r, n, k) for r in range(n_init)]
        centers = xc[torch.tensor(index, device=x.device)]
    labels = torch.full((n_init, n), -1, dtype=torch.long, device=x.device)
    strict = torch.zeros(n_init, dtype=torch.bool, device=x.device)
    active = torch.ones(n_init, dtype=torch.bool, device=x.device)
    n_iter = torch.zeros(n_init, dtype=torch.long, device=x.device)
    for i in range(max_iter):
        act = active.nonzero().flatten()
        new_labels, dist = _assign(xc, xn, centers[act])
        new = _update(xc, new_labels, dist, k)
        shift = ((new.double() - centers[act].double()) ** 2).sum((1, 2))
        same = (new_labels == labels[act]).all(1)
        centers[act] = new
        labels[act] = new_labels
        n_iter[act] = i + 1
        strict[act[same]] = True
        active[act[same | (shift <= tol_abs)]] = False
        if not bool(active.any()):
            break
    redo = (~strict).nonzero().flatten()
    if redo.numel():
        labels[redo] = _assign(xc, xn, centers[redo])[0]
    inertia = torch.stack([((xc.double() - centers[r].double()[labels[r]]) ** 2).sum()
                           for r in range(n_init)])
    # The first run within a relative 1e-9 of the lowest inertia: runs that
    # reach the same partition differ by rounding only.
    best = int((inertia <= inertia.min() * (1 + BEST_RTOL)).nonzero()[0])
    return labels[best], centers[best] + mean, float(inertia[best]), int(n_iter[best])


def kmeans(x: torch.Tensor, k: int, groups: torch.Tensor | None = None, n_init: int = 10,
           max_iter: int = 300, tol: float = 1e-4, seed: int = 0, init: str = "k-means++",
           num_groups: int | None = None) -> KMeansResult:
    """Reference of :func:`wsss_fast.ops.kmeans` (same arguments and result;
    arguments are assumed valid). Loops over the groups in Python; the n_init
    runs of a group are batched."""
    n, d = x.shape
    if groups is None:
        groups = torch.zeros(n, dtype=torch.long, device=x.device)
        num_groups = 1 if num_groups is None else num_groups
    elif num_groups is None:
        num_groups = int(groups.max()) + 1 if n else 0
    labels = torch.zeros(n, dtype=torch.long, device=x.device)
    centroids = torch.full((num_groups, k, d), float("nan"), dtype=x.dtype, device=x.device)
    inertia = torch.zeros(num_groups, dtype=torch.float64, device=x.device)
    n_iter = torch.zeros(num_groups, dtype=torch.long, device=x.device)
    for g in range(num_groups):
        index = (groups == g).nonzero().flatten()
        if index.numel() == 0:
            continue
        lab, cen, ine, it = cluster_group(x[index], k, n_init, max_iter, tol, seed, init, g)
        labels[index] = lab
        centroids[g] = cen
        inertia[g] = ine
        n_iter[g] = it
    return KMeansResult(labels, centroids, inertia, n_iter)
