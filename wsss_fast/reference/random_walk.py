"""The random walk of PSA (SPEC.md, "AffinityNet and random walk"), two ways.

Both compute ``cam @ T^n_steps`` per image, T being PSA's transition matrix:
A[i, j] = aff^beta for every counted pair (i, j) and also for (j, i),
A[i, i] = 1, and T = A with each column divided by its sum.

* :func:`random_walk_dense` builds T as a dense N x N matrix and raises it to
  the power n_steps by repeated squaring, like PSA (N^2 memory, N^3 work per
  squaring): the ground truth for small N.
* :func:`random_walk` applies T as n_steps stencil steps on shifted copies of
  the maps: the fallback of :func:`wsss_fast.ops.random_walk`.

Stencil slots: slot 0 is the pixel itself, slot 1 + k the target of forward
offset k, slot 1 + P + k the source of the pair that reaches the pixel by
offset k (offset -o_k).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..pairs import counted_sources, offsets


def _shift(t: torch.Tensor, dy: int, dx: int, m: int) -> torch.Tensor:
    """out[..., y, x] = t[..., y - dy, x - dx], 0 outside; |dy|, |dx| <= m."""
    h, w = t.shape[-2:]
    padded = F.pad(t, (m, m, m, m))
    return padded[..., m - dy:m - dy + h, m - dx:m - dx + w]


def slot_offsets(radius: int) -> list[tuple[int, int]]:
    """The 2P + 1 (dy, dx) a pixel's new value reads from, in slot order."""
    fwd = list(offsets(radius))
    return [(0, 0)] + fwd + [(-dy, -dx) for dy, dx in fwd]


def transition_weights(aff: torch.Tensor, radius: int, beta: float, border: str) -> torch.Tensor:
    """Column-normalised stencil weights, (B, 2P + 1, H, W).

    w[b, s, y, x] = T[(y, x) + slot_offset_s, (y, x)]: the share of the value at
    (y, x) + slot offset s in the new value at (y, x); zero for pairs that do
    not count. The weights of a pixel sum to 1.
    """
    b, _, h, w = aff.shape
    m = radius - 1
    a = aff.pow(beta)
    fwd, bwd = [], []
    for k, (dy, dx) in enumerate(offsets(radius)):
        counted = counted_sources(h, w, radius, dy, dx, border, aff.device)
        a_k = torch.where(counted, a[:, k], torch.zeros_like(a[:, k]))
        fwd.append(a_k)                    # at the source, towards its target
        bwd.append(_shift(a_k, dy, dx, m))  # at the target, towards its source
    slots = torch.stack([aff.new_ones(b, h, w)] + fwd + bwd, 1)
    return slots / slots.sum(1, keepdim=True)


def random_walk(cam: torch.Tensor, aff: torch.Tensor, radius: int, beta: float = 8.0,
                n_steps: int = 256, border: str = "all") -> torch.Tensor:
    """Sparse shift-based random walk. cam: (B, C, H, W); aff: (B, P, H, W).
    Returns (B, C, H, W) = cam @ T^n_steps per image. Pure PyTorch: each step
    reads 2P + 1 shifted copies of the maps; O(N) memory."""
    h, w = cam.shape[-2:]
    m = radius - 1
    weights = transition_weights(aff, radius, beta, border)
    slots = slot_offsets(radius)
    state = cam
    for _ in range(n_steps):
        padded = F.pad(state, (m, m, m, m))
        new = torch.zeros_like(cam)
        for s, (dy, dx) in enumerate(slots):
            new = new + weights[:, s:s + 1] * padded[:, :, m + dy:m + dy + h, m + dx:m + dx + w]
        state = new
    return state.clone() if n_steps == 0 else state


def transition_matrix(aff: torch.Tensor, radius: int, beta: float, border: str) -> torch.Tensor:
    """PSA's dense transition matrix of one image. aff: (P, H, W). Returns
    (N, N), N = H * W pixels in row-major order: T[i, j] is the share of pixel
    i in the new value of pixel j (columns sum to 1)."""
    _, h, w = aff.shape
    n = h * w
    index = torch.arange(n, device=aff.device).view(h, w)
    a = aff.new_zeros(n, n)
    for k, (dy, dx) in enumerate(offsets(radius)):
        counted = counted_sources(h, w, radius, dy, dx, border, aff.device)
        src = index[counted]
        dst = src + dy * w + dx
        a[src, dst] = aff[k][counted]
        a[dst, src] = aff[k][counted]
    a.fill_diagonal_(1)
    a = a.pow(beta)
    return a / a.sum(0, keepdim=True)


def random_walk_dense(cam: torch.Tensor, aff: torch.Tensor, radius: int, beta: float = 8.0,
                      n_steps: int = 256, border: str = "all") -> torch.Tensor:
    """cam @ T^n_steps with T dense (N x N per image) and raised to the power by
    repeated squaring (torch.linalg.matrix_power: 8 squarings for 256 steps,
    PSA's logt = 8). O(N^2) memory, O(N^3 log n_steps) work: small N only."""
    bsz, c, h, w = cam.shape
    out = []
    for b in range(bsz):
        t = torch.linalg.matrix_power(transition_matrix(aff[b], radius, beta, border), n_steps)
        out.append((cam[b].reshape(c, h * w) @ t).view(c, h, w))
    return torch.stack(out) if out else cam.clone()
