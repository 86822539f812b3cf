"""DRS suppression as the reference composition of the DRS code (SPEC.md, "DRS"):
ReLU -> AdaptiveMaxPool2d(1) -> times the gate -> torch.min."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def drs(x: torch.Tensor, gate: torch.Tensor | float) -> torch.Tensor:
    """min(relu(x), amax_hw(relu(x)) * gate).

    x: (N, C, H, W). gate: (N, C) tensor or a float. Returns (N, C, H, W).
    Its autograd is the behaviour the fused kernels reproduce: ties of the min
    split the gradient 1/2-1/2, the max's gradient goes to the first argmax.
    """
    r = F.relu(x)
    g = gate[:, :, None, None] if isinstance(gate, torch.Tensor) else gate
    if x.numel() == 0:  # adaptive_max_pool2d rejects C = 0; the result is empty
        return r * g
    return torch.min(r, F.adaptive_max_pool2d(r, 1) * g)
