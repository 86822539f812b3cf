"""The wide ResNet-38 of PSA and SC-CAM (Wu et al.'s "model A1", network/
resnet38d.py of PSA), with PSA's module names so its .pth files load as they
are.

Layout, all convolutions without bias, BatchNorm before each convolution
(pre-activation), output stride 8:

    conv1a   3x3, 3 -> 64
    b2       3 blocks of two 3x3 convs, 128 ch, the first with stride 2
    b3       3 blocks, 256 ch, stride 2
    b4       6 blocks, 512 ch, stride 2                       (stride 8 from here)
    b5       3 blocks, 512 -> 1024 ch, dilation 2 (b5's first conv: 1)
    b6       bottleneck 1x1 / 3x3 / 1x1, 1024 -> 512 -> 1024 -> 2048, dilation 4
    b7       bottleneck 2048 -> 1024 -> 2048 -> 4096, dilation 4
    bn7      BatchNorm + ReLU of the 4096-d output

Block ``a`` of a stage (``b4``) and blocks that change width have a 1x1
shortcut ``conv_branch1`` applied to the block's normalised input.
PSA's bottlenecks drop channels (Dropout2d) before their 3x3 and last 1x1
convolutions, with rates 0.3 (b6) and 0.5 (b7); ``block_dropout`` keeps
them. The dropout before the class head belongs to the classifier.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Backbone
from .convert import resnet38_state_from_mxnet
from .weights import load_backbone_weights


class ResBlock(nn.Module):
    """Pre-activation block of two 3x3 convolutions (PSA's ``ResBlock``).

    Args:
        cin, mid, cout: input, middle and output channels.
        stride: of the first convolution and the shortcut.
        dilation: of the second convolution; the first uses
            ``first_dilation`` (default: ``dilation``).
    """

    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1, dilation: int = 1,
                 first_dilation: int | None = None):
        super().__init__()
        first = dilation if first_dilation is None else first_dilation
        self.bn_branch2a = nn.BatchNorm2d(cin)
        self.conv_branch2a = nn.Conv2d(cin, mid, 3, stride, padding=first, dilation=first, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(mid)
        self.conv_branch2b1 = nn.Conv2d(mid, cout, 3, padding=dilation, dilation=dilation, bias=False)
        self.conv_branch1 = (nn.Conv2d(cin, cout, 1, stride, bias=False)
                             if cin != cout or stride != 1 else None)

    def forward_with_act(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, relu(bn_branch2a(x))): the second is the block's
        normalised input, which PSA's AffinityNet taps."""
        act = F.relu(self.bn_branch2a(x))
        shortcut = x if self.conv_branch1 is None else self.conv_branch1(act)
        branch = self.conv_branch2b1(F.relu(self.bn_branch2b1(self.conv_branch2a(act))))
        return shortcut + branch, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_act(x)[0]


class BottleneckBlock(nn.Module):
    """Pre-activation bottleneck cin -> cout/4 (1x1) -> cout/2 (3x3, dilated)
    -> cout (1x1) with a 1x1 shortcut (PSA's ``ResBlock_bot``, stride 1)."""

    def __init__(self, cin: int, cout: int, dilation: int, dropout: float):
        super().__init__()
        self.bn_branch2a = nn.BatchNorm2d(cin)
        self.conv_branch2a = nn.Conv2d(cin, cout // 4, 1, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(cout // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(cout // 4, cout // 2, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn_branch2b2 = nn.BatchNorm2d(cout // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(cout // 2, cout, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(cin, cout, 1, bias=False)

    def forward_with_act(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, relu(bn_branch2a(x)))."""
        act = F.relu(self.bn_branch2a(x))
        branch = F.relu(self.bn_branch2b1(self.conv_branch2a(act)))
        branch = self.conv_branch2b1(self.dropout_2b1(branch))
        branch = F.relu(self.bn_branch2b2(branch))
        branch = self.conv_branch2b2(self.dropout_2b2(branch))
        return self.conv_branch1(act) + branch, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_act(x)[0]


class ResNet38(Backbone):
    """PSA's ResNet-38 (see the module docstring); (N, 3, H, W) ->
    (N, 4096, ceil(H/8), ceil(W/8)).

    Args:
        frozen_stem: keep conv1a and the b2 blocks fixed (requires_grad
            False), as PSA's classifier and AffinityNet do.
        block_dropout: PSA's channel dropout inside b6 (0.3) and b7 (0.5).

    BatchNorm is frozen (``frozen_bn``), as in PSA. ``forward_stages`` returns
    what PSA's AffinityNet taps: relu(b5.bn_branch2a) (512 ch, the end of b4),
    relu(b6.bn_branch2a) (1024 ch, the end of b5) and the final features
    (4096 ch), all at stride 8.
    """

    frozen_bn = True
    STEM = ("conv1a", "b2", "b2_1", "b2_2")

    def __init__(self, frozen_stem: bool = True, block_dropout: bool = True):
        super().__init__()
        self.conv1a = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.b2 = ResBlock(64, 128, 128, stride=2)
        self.b2_1 = ResBlock(128, 128, 128)
        self.b2_2 = ResBlock(128, 128, 128)
        self.b3 = ResBlock(128, 256, 256, stride=2)
        self.b3_1 = ResBlock(256, 256, 256)
        self.b3_2 = ResBlock(256, 256, 256)
        self.b4 = ResBlock(256, 512, 512, stride=2)
        for i in range(1, 6):
            setattr(self, f"b4_{i}", ResBlock(512, 512, 512))
        self.b5 = ResBlock(512, 512, 1024, dilation=2, first_dilation=1)
        self.b5_1 = ResBlock(1024, 512, 1024, dilation=2)
        self.b5_2 = ResBlock(1024, 512, 1024, dilation=2)
        self.b6 = BottleneckBlock(1024, 2048, dilation=4, dropout=0.3 if block_dropout else 0.0)
        self.b7 = BottleneckBlock(2048, 4096, dilation=4, dropout=0.5 if block_dropout else 0.0)
        self.bn7 = nn.BatchNorm2d(4096)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if frozen_stem:
            for name in self.STEM:
                getattr(self, name).requires_grad_(False)
        self._to_b5 = [getattr(self, n) for n in ("b2", "b2_1", "b2_2", "b3", "b3_1", "b3_2", "b4",
                                                   "b4_1", "b4_2", "b4_3", "b4_4", "b4_5")]
        self.out_channels = 4096
        self.stride = 8
        self.stage_channels = (512, 1024, 4096)
        self.stage_strides = (8, 8, 8)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.conv1a(x)
        for block in self._to_b5:
            x = block(x)
        x, conv4 = self.b5.forward_with_act(x)
        x = self.b5_2(self.b5_1(x))
        x, conv5 = self.b6.forward_with_act(x)
        conv6 = F.relu(self.bn7(self.b7(x)))
        return [conv4, conv5, conv6]


def resnet38(weights: str | os.PathLike | None = None, frozen_stem: bool = True,
             block_dropout: bool = True) -> ResNet38:
    """ResNet-38 (see :class:`ResNet38` for the options) from a PSA-format
    .pth file (PSA's converted ImageNet weights, or a trained PSA / SC-CAM
    model: its heads such as ``fc8`` are reported as unexpected), from
    MXNet's original ``.params`` file (converted on the fly, see
    :mod:`wsss_fast.models.convert`), or randomly initialised (None)."""
    model = ResNet38(frozen_stem=frozen_stem, block_dropout=block_dropout)
    if weights is not None:
        source = resnet38_state_from_mxnet(weights)[0] if Path(weights).suffix == ".params" else weights
        load_backbone_weights(model, source, what="ResNet-38")
    return model
