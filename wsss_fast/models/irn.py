"""IRN's inter-pixel relation network, class-boundary branch (Ahn, Cho and
Kwak, CVPR 2019; jiwoon-ahn/irn net/resnet50_irn.py), on any
:class:`Backbone` whose pyramid starts at stride 4. A trained one is rebuilt
from its final.pt by :func:`wsss_fast.models.checkpoints.load_boundary_net`.

IRN's network has two branches on a frozen ResNet-50: class boundaries (used
for semantic segmentation) and a displacement field (used only for instance
segmentation). wsss-fast offers semantic segmentation only, so it has the
boundary branch alone; the displacement branch, its loss terms and its
mean-shift statistics are left out.

The branch (IRN's fc_edge1..6): each pyramid map (ResNet-50: stem 64 ch and
layer1 256 ch at stride 4, layer2 512 at 8, layer3 1024 and layer4 2048 at 16)
goes through a 1x1 convolution without bias to 32 channels, GroupNorm with 4
groups, bilinear upsampling by its stride / 4 (align_corners=False) and ReLU,
in that order, and is cropped to the stride-4 grid; the 32 x (number of maps)
channels are concatenated and a 1x1 convolution with bias gives one
boundary logit per stride-4 cell. PyTorch's default initialisation, as IRN.
The backbone is frozen: no gradient, eval mode (IRN detaches every stage and
keeps the backbone in eval mode while training).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from .backbone import Backbone, param_groups

WIDTH = 32   # channels per pyramid map (IRN: 32)
GROUPS = 4   # GroupNorm groups (IRN: 4)
STRIDE = 4   # the boundary map's stride


class BoundaryNet(nn.Module):
    """IRN's class-boundary branch on a frozen backbone.

    Args:
        backbone: a Backbone whose ``pyramid_strides`` start at 4 and are
            multiples of 4 (resnet50, resnet101, scratch).

    ``forward(x)``: normalised images (B, 3, H, W) -> boundary logits
    (B, 1, ceil(H / 4), ceil(W / 4)). :meth:`predict` gives IRN's inference
    map (probabilities, flip-averaged, on a padded input).
    """

    stride = STRIDE

    def __init__(self, backbone: Backbone):
        super().__init__()
        strides = tuple(backbone.pyramid_strides)
        if not strides or strides[0] != STRIDE or any(s % STRIDE for s in strides):
            raise UsageError(f"IRN's boundary branch needs a backbone pyramid that starts at stride "
                             f"{STRIDE} (strides multiples of {STRIDE}); {type(backbone).__name__} has "
                             f"strides {strides}. Use resnet50 (IRN), resnet101, efficientnet_lite0 or scratch")
        self.backbone = backbone.requires_grad_(False)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, WIDTH, 1, bias=False), nn.GroupNorm(GROUPS, WIDTH))
            for c in backbone.pyramid_channels)
        self.fuse = nn.Conv2d(WIDTH * len(strides), 1, 1, bias=True)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            maps = self.backbone.forward_pyramid(x)
        h, w = maps[0].shape[-2:]
        out = []
        for m, stride, branch in zip(maps, self.backbone.pyramid_strides, self.branches):
            f = branch(m)
            if stride != STRIDE:
                f = F.interpolate(f, scale_factor=stride // STRIDE, mode="bilinear", align_corners=False)
            out.append(F.relu(f)[..., :h, :w])
        return self.fuse(torch.cat(out, 1))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, pad_to: int = 0) -> torch.Tensor:
        """IRN's inference boundary map (step/make_sem_seg_labels.py with
        net/resnet50_irn.py EdgeDisplacement).

        Args:
            x: (B, 3, H, W) normalised images.
            pad_to: the images (and their mirrors) are zero-padded at the
                bottom and right to at least pad_to x pad_to (IRN: its
                training crop, 512) before the network sees them.

        Returns:
            (B, 1, ceil(H / 4), ceil(W / 4)) float32 boundary probabilities:
            the sigmoid of the mean of the logits of the image and of its
            mirror (mirrored back), each cropped to the image's cells first.
        """
        h, w = x.shape[-2:]
        pad = (0, max(pad_to - w, 0), 0, max(pad_to - h, 0))
        both = F.pad(torch.cat([x, x.flip(-1)]), pad)
        logits = self(both).float()[..., :-(-h // STRIDE), :-(-w // STRIDE)]
        n = len(x)
        return torch.sigmoid((logits[:n] + logits[n:].flip(-1)) / 2)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The learning-rate groups: every trainable parameter is new (the
        backbone is frozen)."""
        return param_groups(self, new_prefixes=("branches.", "fuse."))
