"""DRS's refinement network (SPEC.md, "DRS", refinement learning): a plain
backbone (no DRS) and a 1x1 convolution with bias that regresses the DRS
classifier's localisation maps."""
from __future__ import annotations

import torch
from torch import nn

from .backbone import Backbone, param_groups


class RefineNet(nn.Module):
    """Localisation-map regressor.

    Args:
        backbone: feature extractor, (N, 3, H, W) -> (N, D, h, w); for DRS the
            VGG-16 D1 with its extra convolutions and plain ReLUs.
        num_classes: C, object classes (background excluded).

    The head is the reference's last layer: a 1x1 convolution with bias,
    weights drawn from N(0, 0.01^2), bias 0.
    """

    def __init__(self, backbone: Backbone, num_classes: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"RefineNet: num_classes must be >= 1, got {num_classes}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.head = nn.Conv2d(backbone.out_channels, num_classes, 1)
        nn.init.normal_(self.head.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) regressed maps at the backbone's stride (not rectified)."""
        return self.head(self.backbone(x))

    def class_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The maps CAM inference reads: the raw regressed maps, as DRS uses
        them (it neither rectifies nor normalises them before fusing)."""
        return self(x)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The four learning-rate groups (see :func:`param_groups`); the head is new."""
        return param_groups(self, new_prefixes=("head.",))
