"""A small CNN trained from random initialisation, for tests and for runs
that must not depend on any pretrained weights."""
from __future__ import annotations

import torch
from torch import nn

from ..nn import DRS, DRS_DELTA, DRS_MODES
from .backbone import Backbone


def _conv_bn_act(cin: int, cout: int, stride: int = 1, dilation: int = 1, *, drs: str = "none",
                 delta: float = DRS_DELTA) -> nn.Sequential:
    if drs == "none":
        act = nn.ReLU(inplace=True)
    else:
        act = DRS(cout, None if drs == "learnable" else delta)
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation,
                                   bias=False),
                         nn.BatchNorm2d(cout), act)


class ScratchCNN(Backbone):
    """Four stages of two 3x3 conv-BN-ReLU layers; strides 2, 2, 2, 1
    (dilation 2 in the last stage), so output stride 8.

    Args:
        width: channels of the first stage; stages have width x (1, 2, 4, 8).
        drs: "none" (ReLU), or DRS in place of all 8 ReLUs as the DRS paper
            places it in VGG-16: "learnable" (controller) or "delta" (constant).
        delta: the constant suppression level with drs="delta".
        frozen_bn: keep BatchNorm fixed (at initialisation: identity), so an
            image's outputs do not depend on the rest of its batch (how the
            multi-process tests compare runs exactly).
    """

    def __init__(self, width: int = 32, drs: str = "none", delta: float = DRS_DELTA, frozen_bn: bool = False):
        super().__init__()
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"ScratchCNN: width must be a positive int, got {width!r}")
        if drs not in DRS_MODES:
            raise ValueError(f"ScratchCNN: drs must be one of {DRS_MODES}, got {drs!r}")
        self.frozen_bn = bool(frozen_bn)
        c = [width, 2 * width, 4 * width, 8 * width]

        def layer(cin, cout, stride=1, dilation=1):
            return _conv_bn_act(cin, cout, stride, dilation, drs=drs, delta=delta)

        self.stage1 = nn.Sequential(layer(3, c[0], 2), layer(c[0], c[0]))
        self.stage2 = nn.Sequential(layer(c[0], c[1], 2), layer(c[1], c[1]))
        self.stage3 = nn.Sequential(layer(c[1], c[2], 2), layer(c[2], c[2]))
        self.stage4 = nn.Sequential(layer(c[2], c[3], 1, 2), layer(c[3], c[3], 1, 2))
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
