"""ResNet-101 with torchvision's module names and block layout, dilated to
output stride 8 as DeepLab-v2 uses it.

Layout (torchvision ``resnet101(replace_stride_with_dilation=[False, True,
True])``): conv1 7x7 stride 2, bn1, ReLU, 3x3 stride-2 max pooling; layer1..4
of 3, 4, 23, 3 bottlenecks (1x1, 3x3, 1x1 convolutions without bias, each
followed by BatchNorm; the stride sits in the 3x3; a 1x1 conv + BN
``downsample`` shortcut on each layer's first block). layer3 and layer4 keep
stride 1 and dilate their 3x3 convolutions by 2 and 4, except the first block
of each, which keeps the previous dilation (1 and 2).
"""
from __future__ import annotations

import os

import torch
from torch import nn

from .backbone import Backbone
from .weights import load_backbone_weights

LAYERS = (3, 4, 23, 3)


class Bottleneck(nn.Module):
    """torchvision's bottleneck: cin -> width (1x1) -> width (3x3, stride,
    dilation) -> 4 * width (1x1), plus the shortcut."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet101(Backbone):
    """Dilated ResNet-101 (see the module docstring); (N, 3, H, W) ->
    (N, 2048, ceil(H/8), ceil(W/8)).

    Args:
        frozen_bn: keep BatchNorm statistics and affine parameters fixed
            (DeepLab-v2 does; default True).

    ``forward_stages`` returns the outputs of layer2 (512 ch), layer3 (1024)
    and layer4 (2048), all at stride 8: like PSA's ResNet-38 taps, the end of
    the last downsampling stage and the two stages after it.
    """

    def __init__(self, frozen_bn: bool = True):
        super().__init__()
        self.frozen_bn = bool(frozen_bn)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        self._cin = 64
        self._dilation = 1
        self.layer1 = self._make_layer(64, LAYERS[0])
        self.layer2 = self._make_layer(128, LAYERS[1], stride=2)
        self.layer3 = self._make_layer(256, LAYERS[2], dilate=True)
        self.layer4 = self._make_layer(512, LAYERS[3], dilate=True)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.out_channels = 2048
        self.stride = 8
        self.stage_channels = (512, 1024, 2048)
        self.stage_strides = (8, 8, 8)

    def _make_layer(self, width: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        # A dilated layer replaces its stride 2 with dilation 2; its first block
        # keeps the dilation before it (torchvision's rule).
        first_dilation = self._dilation
        if dilate:
            self._dilation *= 2
        cout = width * Bottleneck.expansion
        downsample = None
        if stride != 1 or self._cin != cout:
            downsample = nn.Sequential(nn.Conv2d(self._cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        layers = [Bottleneck(self._cin, width, stride, first_dilation, downsample)]
        layers += [Bottleneck(cout, width, dilation=self._dilation) for _ in range(1, blocks)]
        self._cin = cout
        return nn.Sequential(*layers)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer2(self.layer1(x))
        c3 = self.layer3(c2)
        return [c2, c3, self.layer4(c3)]


def resnet101(weights: str | os.PathLike | None = None, frozen_bn: bool = True) -> ResNet101:
    """Dilated ResNet-101 (see :class:`ResNet101`) from a torchvision-format
    state dict (``fc.*`` reported as unexpected) or randomly initialised
    (None)."""
    model = ResNet101(frozen_bn=frozen_bn)
    if weights is not None:
        load_backbone_weights(model, weights, what="ResNet-101")
    return model
