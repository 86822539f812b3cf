"""A small CNN trained from random initialisation, for tests and for runs
that must not depend on any pretrained weights."""
from __future__ import annotations

import torch
from torch import nn

from .backbone import Backbone


def _conv_bn_relu(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation,
                                   bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ScratchCNN(Backbone):
    """Four stages of two 3x3 conv-BN-ReLU layers; strides 2, 2, 2, 1
    (dilation 2 in the last stage), so output stride 8.

    Args:
        width: channels of the first stage; stages have width x (1, 2, 4, 8).
    """

    def __init__(self, width: int = 32):
        super().__init__()
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"ScratchCNN: width must be a positive int, got {width!r}")
        c = [width, 2 * width, 4 * width, 8 * width]
        self.stage1 = nn.Sequential(_conv_bn_relu(3, c[0], 2), _conv_bn_relu(c[0], c[0]))
        self.stage2 = nn.Sequential(_conv_bn_relu(c[0], c[1], 2), _conv_bn_relu(c[1], c[1]))
        self.stage3 = nn.Sequential(_conv_bn_relu(c[1], c[2], 2), _conv_bn_relu(c[2], c[2]))
        self.stage4 = nn.Sequential(_conv_bn_relu(c[2], c[3], 1, 2), _conv_bn_relu(c[3], c[3], 1, 2))
        self.out_channels = c[3]
        self.stride = 8
        self.stage_channels = (c[1], c[2], c[3])
        self.stage_strides = (4, 8, 8)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        s2 = self.stage2(self.stage1(x))
        s3 = self.stage3(s2)
        return [s2, s3, self.stage4(s3)]

    def is_new(self, name: str) -> bool:
        return True
