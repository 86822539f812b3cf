"""Dense CRF (Kraehenbuehl & Koltun) mean field, two ways, in pydensecrf's
formulation (SPEC.md, "Dense CRF"; read from pydensecrf's densecrf.cpp,
pairwise.cpp, labelcompatibility.cpp and permutohedral.cpp):

* unary U = -log(clip(p, 1e-5, 1)) (``pydensecrf.utils.unary_from_softmax``);
  Q0 = softmax(-U) over the labels of each pixel;
* two kernels on features f_i, each with a Potts weight w: Gaussian on
  (x, y) / sxy and bilateral on (x, y) / sxy, (r, g, b) / srgb; the kernel
  k(f_i, f_j) = exp(-|f_i - f_j|^2 / 2) *includes j = i*, and is normalised
  symmetrically: with n_i = 1 / sqrt(sum_j k(f_i, f_j)), the message of a
  kernel is m_i = n_i sum_j k(f_i, f_j) n_j Q_j (pydensecrf's default
  NORMALIZE_SYMMETRIC; any constant factor of the kernel cancels);
* one iteration: Q = softmax(-U + w_gauss m_gauss + w_bilateral m_bilateral)
  (the Potts compatibility -w applied to the messages and subtracted from
  -U), ``iterations`` times.

:func:`dense_crf_exact` computes the kernels exactly as N x N matrices in
float64 (tiny images only): the ground truth that both pydensecrf and the
lattice are held to. :func:`dense_crf` replaces each kernel by the
permutohedral lattice (Adams et al. 2010) exactly as pydensecrf builds it
(float32 elevation, rounding, barycentric weights, [1 2 1] / 2 blur along each
of the d + 1 lattice directions, scale 1 / (1 + 2^-d)): the function the
compiled kernels compute, and their fallback.

Inputs of both: image (B, 3, H, W) uint8 RGB, probs (B, K, H, W) in [0, 1],
num_labels None or a (B,) int64 tensor: image b uses the first
num_labels[b] channels only (the others are ignored and come out 0).
Returns the (B, K, H, W) marginals (float32 for the lattice, float64 for the
exact mean field).
"""
from __future__ import annotations

import math

import torch

PROB_FLOOR = 1e-5


def _mean_field(unary_neg: torch.Tensor, messages, compats, iterations: int) -> torch.Tensor:
    """unary_neg: (N, K) = -U; messages: functions (N, K) -> (N, K)."""
    q = torch.softmax(unary_neg, dim=1)
    for _ in range(iterations):
        energy = unary_neg
        for message, w in zip(messages, compats):
            energy = energy - (-w * message(q))  # Potts: -w, subtracted (pydensecrf's order)
        q = torch.softmax(energy, dim=1)
    return q


def _features(image: torch.Tensor, sxy: float, srgb: float | None, dtype) -> torch.Tensor:
    """(N, 2) [x, y] / sxy, or (N, 5) with [r, g, b] / srgb; row-major pixels.
    Divided in ``dtype`` as pydensecrf divides in float32."""
    _, h, w = image.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=dtype), torch.arange(w, dtype=dtype), indexing="ij")
    sxy_t = torch.tensor(sxy, dtype=torch.float32).to(dtype)
    cols = [xs.reshape(-1) / sxy_t, ys.reshape(-1) / sxy_t]
    if srgb is not None:
        srgb_t = torch.tensor(srgb, dtype=torch.float32).to(dtype)
        cols += [image[c].reshape(-1).to(dtype) / srgb_t for c in range(3)]
    return torch.stack(cols, 1)


def _unary_neg(probs: torch.Tensor, dtype) -> torch.Tensor:
    """(K, H, W) -> (N, K) log(clip(p, 1e-5, 1))."""
    k = probs.shape[0]
    return torch.log(probs.to(dtype).clamp(PROB_FLOOR, 1.0)).reshape(k, -1).t()


def _per_image(image, probs, num_labels, run, dtype) -> torch.Tensor:
    """run(image (3, H, W), probs (k, H, W)) -> (N, k) marginals, per image
    of the batch with its k labels; (B, K, H, W) in dtype, 0 beyond k."""
    out = torch.zeros(probs.shape, dtype=dtype)
    for b in range(probs.shape[0]):
        k = probs.shape[1] if num_labels is None else int(num_labels[b])
        out[b, :k] = run(image[b], probs[b, :k]).t().reshape(k, *probs.shape[2:])
    return out


def dense_crf_exact(image: torch.Tensor, probs: torch.Tensor, num_labels: torch.Tensor | None,
                    iterations: int, gaussian_sxy: float, gaussian_compat: float,
                    bilateral_sxy: float, bilateral_srgb: float,
                    bilateral_compat: float) -> torch.Tensor:
    """pydensecrf's mean field with the true Gaussian kernels as dense N x N
    float64 matrices (N = H * W; O(N^2) memory and work: tiny images only).
    Returns (B, K, H, W) float64."""
    def kernel(f):
        k = torch.exp(-0.5 * torch.cdist(f, f).square())
        norm = 1.0 / torch.sqrt(k.sum(1, keepdim=True))
        return lambda q: norm * (k @ (norm * q))

    def run(img, p):
        img, p = img.cpu(), p.cpu()
        messages = [kernel(_features(img, gaussian_sxy, None, torch.float64)),
                    kernel(_features(img, bilateral_sxy, bilateral_srgb, torch.float64))]
        return _mean_field(_unary_neg(p, torch.float64), messages,
                           (gaussian_compat, bilateral_compat), iterations)

    return _per_image(image, probs, num_labels, run, torch.float64)


# ------------------------------------------------------- permutohedral lattice

def _scale_factors(d: int) -> torch.Tensor:
    """pydensecrf's diagonal of the elevation matrix, float32: the double
    1 / sqrt((i + 1)(i + 2)) times float(sqrt(2/3) (d + 1)), rounded."""
    inv_std = float(torch.tensor(math.sqrt(2.0 / 3.0) * (d + 1), dtype=torch.float32))
    return torch.tensor([1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std for i in range(d)],
                        dtype=torch.float32)


class Lattice:
    """The permutohedral lattice of (N, d) float32 features.

    Attributes:
        vertex: (N, d + 1) int64, the lattice point of each pixel's simplex
            corner of remainder 0..d (row of the value table, 0-based).
        weight: (N, d + 1) float32 barycentric weights (sum 1 per pixel).
        neighbours: (d + 1, M, 2) int64, the two neighbours of each point
            along each direction; M (a zero row) where there is none.
        size: M, the number of lattice points.
    """

    def __init__(self, features: torch.Tensor):
        n, d = features.shape
        d1 = d + 1
        inv_d1 = torch.tensor(1.0 / d1, dtype=torch.float32)
        scale = _scale_factors(d)
        # elevation, in pydensecrf's order of float32 operations
        elevated = torch.zeros(n, d1, dtype=torch.float32)
        sm = torch.zeros(n, dtype=torch.float32)
        for j in range(d, 0, -1):
            cf = features[:, j - 1] * scale[j - 1]
            elevated[:, j] = sm - float(j) * cf
            sm = sm + cf
        elevated[:, 0] = sm
        # closest remainder-0 point: round each coordinate / (d + 1), half to even
        rounded = torch.round(elevated * inv_d1)
        rem0 = rounded * float(d1)
        total = rounded.sum(1).to(torch.int64)
        # rank of each coordinate's residual (ties: the lower index ranks lower)
        diff = elevated - rem0
        later = torch.triu(torch.ones(d1, d1, dtype=torch.bool), 1)  # [i, j]: j > i
        greater = diff[:, None, :] > diff[:, :, None]                  # [n, i, j]: diff_j > diff_i
        not_less = diff[:, None, :] >= diff[:, :, None]
        rank = (greater & later).sum(2) + (not_less & later.t()).sum(2) + total[:, None]
        low, high = rank < 0, rank > d
        rank = rank + d1 * low.to(torch.int64) - d1 * high.to(torch.int64)
        rem0 = rem0 + float(d1) * low.to(torch.float32) - float(d1) * high.to(torch.float32)
        # barycentric weights, accumulated coordinate by coordinate
        bary = torch.zeros(n, d + 2, dtype=torch.float32)
        for i in range(d1):
            v = (elevated[:, i] - rem0[:, i]) * inv_d1
            bary.scatter_add_(1, (d - rank[:, i:i + 1]), v[:, None])
            bary.scatter_add_(1, (d - rank[:, i:i + 1] + 1), -v[:, None])
        bary[:, 0] = bary[:, 0] + (1.0 + bary[:, d + 1])
        # the d + 1 corners: rem0 + canonical simplex (first d coordinates)
        remainder = torch.arange(d1)
        canonical = torch.where(torch.arange(d1)[None, :] <= d - remainder[:, None],
                                remainder[:, None], remainder[:, None] - d1)  # [k, rank]
        keys = rem0[:, None, :d].to(torch.int64) + canonical[:, rank[:, :d]].permute(1, 0, 2)
        codes, self._lo, self._radix = _encode_keys(keys.reshape(-1, d), d1)
        table, inverse = torch.unique(codes, return_inverse=True)
        self.vertex = inverse.view(n, d1)
        self.weight = bary[:, :d1].contiguous()
        self.size = len(table)
        points = _decode_keys(table, self._lo, self._radix)
        nbrs = []
        for j in range(d1):
            step = torch.full((d,), -1, dtype=torch.int64)
            if j < d:
                step[j] = d
            nbrs.append(torch.stack([self._find(table, points + step),
                                     self._find(table, points - step)], 1))
        self.neighbours = torch.stack(nbrs)
        self.alpha = 1.0 / (1.0 + 2.0 ** -d)

    def _find(self, table: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        codes, inside = _encode_keys(keys, None, self._lo, self._radix)
        pos = torch.searchsorted(table, codes).clamp(max=len(table) - 1)
        found = inside & (table[pos] == codes)
        return torch.where(found, pos, torch.full_like(pos, len(table)))

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """Splat (barycentric), blur ([1 2 1] / 2 along directions 0..d), slice
        (barycentric, times 1 / (1 + 2^-d)). values: (N, K) float32."""
        n, k = values.shape
        table = values.new_zeros(self.size + 1, k)
        table.index_add_(0, self.vertex.reshape(-1),
                         (self.weight[:, :, None] * values[:, None, :]).reshape(-1, k))
        for nb in self.neighbours:
            table = torch.cat([table[:-1] + 0.5 * (table[nb[:, 0]] + table[nb[:, 1]]),
                               table[-1:]])
        return ((self.weight * self.alpha)[:, :, None] * table[self.vertex]).sum(1)


def _encode_keys(keys: torch.Tensor, d1: int | None, lo=None, radix=None):
    """Lattice keys (n, d) int64 -> int64 codes (mixed radix over the key
    box). With d1, the box is taken from keys (widened by d1 each way, room
    for the neighbours) and (codes, lo, radix) is returned; otherwise
    (codes, inside) for the given box."""
    if d1 is not None:
        lo = keys.amin(0) - d1 if len(keys) else torch.zeros(keys.shape[1], dtype=torch.int64)
        hi = keys.amax(0) + d1 if len(keys) else lo
        radix = hi - lo + 1
        if float(torch.prod(radix.double())) >= 2.0 ** 62:
            raise ValueError("dense_crf: the features span too large a lattice")
    stride = torch.cumprod(torch.cat([radix.new_ones(1), radix[:-1]]), 0)
    rel = keys - lo
    codes = (rel * stride).sum(1)
    if d1 is not None:
        return codes, lo, radix
    return codes, ((rel >= 0) & (rel < radix)).all(1)


def _decode_keys(codes: torch.Tensor, lo: torch.Tensor, radix: torch.Tensor) -> torch.Tensor:
    cols = []
    for r in radix.tolist():
        cols.append(codes % r)
        codes = codes // r
    return torch.stack(cols, 1) + lo


def dense_crf(image: torch.Tensor, probs: torch.Tensor, num_labels: torch.Tensor | None,
              iterations: int, gaussian_sxy: float, gaussian_compat: float, bilateral_sxy: float,
              bilateral_srgb: float, bilateral_compat: float) -> torch.Tensor:
    """pydensecrf's mean field with the permutohedral lattice, float32, one
    image at a time (see the module docstring). Returns (B, K, H, W) float32
    on the device of probs."""
    device = probs.device

    def message(lattice):
        norm = 1.0 / torch.sqrt(lattice.filter(torch.ones(lattice.vertex.shape[0], 1)).double()
                                + 1e-20)
        norm = norm.float()
        return lambda q: norm * lattice.filter(norm * q)

    def run(img, p):
        img, p = img.cpu(), p.cpu()
        messages = [message(Lattice(_features(img, gaussian_sxy, None, torch.float32))),
                    message(Lattice(_features(img, bilateral_sxy, bilateral_srgb, torch.float32)))]
        return _mean_field(_unary_neg(p, torch.float32), messages,
                           (float(gaussian_compat), float(bilateral_compat)), iterations)

    return _per_image(image, probs, num_labels, run, torch.float32).to(device)
