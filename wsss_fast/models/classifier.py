"""The image classifier of CAM, DRS and SC-CAM: a backbone, a 1x1
convolution to C classes (the CAM head; no bias unless asked), global
average pooling, and for SC-CAM a second head to C * K sub-categories."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Backbone, param_groups


HEAD_INITS = ("xavier", "he")


class Classifier(nn.Module):
    """CAM classifier.

    Args:
        backbone: feature extractor, (N, 3, H, W) -> (N, D, h, w).
        num_classes: C, object classes (background excluded).
        subcategories: K sub-categories per class for SC-CAM's second head
            (0: none).
        dropout: channel dropout on the features before the heads (PSA's
            ResNet-38 classifier uses 0.5).
        head_bias: give the class head a bias (DRS's ``extra_conv4`` has
            one; PSA's and SC-CAM's ``fc8`` has none). The CAM then includes
            the bias, as DRS's CAMs do.
        head_init: "xavier" (Xavier-uniform, PSA and SC-CAM) or "he" (normal
            with std sqrt(2 / (k * k * out_channels)), DRS's
            ``_initialize_weights``: sqrt(2 / 20) for VOC); a bias starts at 0.
            The sub-category head is always Xavier-uniform, as SC-CAM's.
    """

    def __init__(self, backbone: Backbone, num_classes: int, *, subcategories: int = 0,
                 dropout: float = 0.0, head_bias: bool = False, head_init: str = "xavier"):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"Classifier: num_classes must be >= 1, got {num_classes}")
        if subcategories < 0:
            raise ValueError(f"Classifier: subcategories must be >= 0, got {subcategories}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.subcategories = subcategories
        if head_init not in HEAD_INITS:
            raise ValueError(f"Classifier: head_init must be one of {HEAD_INITS}, got {head_init!r}")
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Conv2d(backbone.out_channels, num_classes, 1, bias=head_bias)
        if head_init == "xavier":
            nn.init.xavier_uniform_(self.head.weight)
        else:
            nn.init.normal_(self.head.weight, 0.0, math.sqrt(2.0 / num_classes))  # fan-out of a 1x1 conv
        if head_bias:
            nn.init.zeros_(self.head.bias)
        self.sub_head = None
        if subcategories:
            self.sub_head = nn.Conv2d(backbone.out_channels, num_classes * subcategories, 1, bias=False)
            nn.init.xavier_uniform_(self.sub_head.weight)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns ``logits`` (N, C), ``sub_logits`` (N, C * K) with a
        sub-category head, and ``features`` (N, D), the pooled features."""
        pooled = F.adaptive_avg_pool2d(self.dropout(self.backbone(x)), 1)
        out = {"logits": self.head(pooled).flatten(1), "features": pooled.flatten(1)}
        if self.sub_head is not None:
            out["sub_logits"] = self.sub_head(pooled).flatten(1)
        return out

    def class_maps(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) class activation maps at the backbone's stride:
        ReLU of the CAM head applied to every feature cell."""
        return F.relu(self.head(self.backbone(x)))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The four learning-rate groups (see :func:`param_groups`); the heads are new."""
        return param_groups(self, new_prefixes=("head.", "sub_head."))
