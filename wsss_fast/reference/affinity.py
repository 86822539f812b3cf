"""AffinityNet's pairwise affinities as the reference composition of PSA:
a = exp(-mean_d |f(source) - f(target)|), one shifted copy of the features per
offset (never all P at once)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..pairs import offsets, target_inside


def affinity(features: torch.Tensor, radius: int) -> torch.Tensor:
    """features: (B, D, H, W) with D >= 1. Returns (B, P, H, W) with
    [b, k, y, x] = exp(-mean_d |f[b, d, y, x] - f[b, d, y + dy_k, x + dx_k]|),
    0 where the target is outside the image. Differentiable by autograd; the
    subgradient of |.| at 0 is 0 (torch.abs)."""
    b, _, h, w = features.shape
    m = radius - 1
    padded = F.pad(features, (m, m, 0, m))  # left, right, top, bottom
    maps = []
    for dy, dx in offsets(radius):
        target = padded[:, :, dy:dy + h, m + dx:m + dx + w]
        a = torch.exp(-(features - target).abs().mean(1))
        maps.append(torch.where(target_inside(h, w, dy, dx, features.device), a,
                                torch.zeros_like(a)))
    if not maps:
        return features.new_zeros(b, 0, h, w)
    return torch.stack(maps, 1)
