"""Modules built on the wsss_fast operators."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import ops

DRS_MODES = ("none", "learnable", "delta")  # a backbone's drs option: ReLU, controller, constant
DRS_DELTA = 0.55  # the DRS paper's best constant suppression level


class DRS(nn.Module):
    """Discriminative region suppression, a drop-in replacement for ``nn.ReLU``.

    ``out = min(relu(x), amax_hw(relu(x)) * g)`` on an (N, C, H, W) input, with
    ``g = sigmoid(W . GAP(relu(x)))`` (W: C x C, no bias) when ``delta`` is None
    (the learnable controller of the DRS paper), else the constant ``delta``.

    Args:
        channels: C, the number of input channels.
        delta: constant suppression level in [0, 1] (0.55 is the paper's best),
            or None for the learnable controller.
    """

    def __init__(self, channels: int, delta: float | None = None):
        super().__init__()
        if not isinstance(channels, int) or channels <= 0:
            raise ValueError(f"DRS: channels must be a positive int, got {channels!r}")
        if delta is not None and not (math.isfinite(delta) and 0.0 <= delta <= 1.0):
            raise ValueError(f"DRS: delta must be in [0, 1] or None, got {delta!r}")
        self.channels = channels
        self.delta = delta
        self.controller = nn.Linear(channels, channels, bias=False) if delta is None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"DRS: expected an (N, {self.channels}, H, W) input, got shape {tuple(x.shape)}")
        if self.controller is None:
            return ops.drs(x, self.delta)
        # GAP(relu(x)) feeds the gate; relu(x) here is the controller's input only.
        gate = torch.sigmoid(self.controller(F.relu(x).mean(dim=(2, 3))))
        return ops.drs(x, gate)

    def extra_repr(self) -> str:
        mode = "learnable" if self.delta is None else f"delta={self.delta}"
        return f"{self.channels}, {mode}"
