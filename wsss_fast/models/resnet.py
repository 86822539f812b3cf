"""ResNet-50 and ResNet-101 with torchvision's module names and block
layout: ResNet-101 dilated to output stride 8 as DeepLab-v2 uses it,
ResNet-50 at output stride 16 as IRN's CAM and IRN networks use it.

Layout (torchvision ``resnet50`` / ``resnet101``): conv1 7x7 stride 2, bn1,
ReLU, 3x3 stride-2 max pooling; layer1..4 of (3, 4, 6, 3) or (3, 4, 23, 3)
bottlenecks (1x1, 3x3, 1x1 convolutions without bias, each followed by
BatchNorm; the stride sits in the 3x3; a 1x1 conv + BN ``downsample``
shortcut on each layer's first block). Output stride 8 (torchvision's
``replace_stride_with_dilation=[False, True, True]``): layer3 and layer4 keep
stride 1 and dilate their 3x3 convolutions by 2 and 4, except the first block
of each, which keeps the previous dilation (1 and 2). Output stride 16 (IRN's
net/resnet50.py with ``strides=(2, 2, 2, 1)``): layer4 keeps stride 1 and is
not dilated.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from ..errors import UsageError
from .backbone import Backbone
from .weights import load_backbone_weights

LAYERS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
OUTPUT_STRIDES = (8, 16)
PYRAMID_CHANNELS = (64, 256, 512, 1024, 2048)


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


class ResNet(Backbone):
    """ResNet-50/101 (see the module docstring); (N, 3, H, W) ->
    (N, 2048, ceil(H / s), ceil(W / s)), s = ``output_stride``.

    Args:
        layers: bottlenecks per layer, (3, 4, 6, 3) or (3, 4, 23, 3).
        output_stride: 8 (dilated layer3 and layer4, DeepLab) or 16 (layer4
            at stride 1 without dilation, IRN).
        frozen_bn: keep BatchNorm statistics fixed (eval mode) while
            training, and its affine parameters too unless
            ``train_bn_affine`` (DeepLab-v2: both fixed).
        train_bn_affine: with frozen_bn, still train BatchNorm's scale and
            shift (IRN's ``FixedBatchNorm``: statistics fixed, affine
            parameters in the optimiser).
        frozen_stages: 0..4, the leading stages that get no gradient and stay
            in eval mode: 1 = stem and layer1, 2 = also layer2 (IRN's CAM net
            detaches layer2's output), ... .

    ``forward_stages`` returns the outputs of layer2 (512 ch), layer3 (1024)
    and layer4 (2048): like PSA's ResNet-38 taps, the end of the last
    stride-8 stage and the two stages after it. ``forward_pyramid`` returns
    the stem (64 ch, after the max pooling, stride 4), layer1 (256, 4),
    layer2 (512, 8), layer3 and layer4: the five maps IRN's boundary branch
    reads.
    """

    pyramid_channels = PYRAMID_CHANNELS

    def __init__(self, layers: tuple[int, int, int, int], *, output_stride: int = 8,
                 frozen_bn: bool = True, train_bn_affine: bool = False, frozen_stages: int = 0):
        super().__init__()
        if output_stride not in OUTPUT_STRIDES:
            raise UsageError(f"ResNet: output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
        if isinstance(frozen_stages, bool) or frozen_stages not in range(5):
            raise UsageError(f"ResNet: frozen_stages must be an int in 0..4, got {frozen_stages!r}")
        if train_bn_affine and not frozen_bn:
            raise UsageError("ResNet: train_bn_affine=True needs frozen_bn=True (it says which BatchNorm "
                             "parameters of the frozen layers still train)")
        self.frozen_bn = bool(frozen_bn)
        self.train_bn_affine = bool(train_bn_affine)
        self.frozen_stages = frozen_stages
        self.conv1 = nn.Conv2d(3, 64, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        self._cin = 64
        self._dilation = 1
        dilated = output_stride == 8
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=1 if dilated else 2, dilate=dilated)
        self.layer4 = self._make_layer(512, layers[3], dilate=dilated)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.out_channels = 2048
        self.stride = output_stride
        self.stage_channels = PYRAMID_CHANNELS[2:]
        self.stage_strides = (8, output_stride, output_stride)
        for module in self._frozen_modules():
            module.requires_grad_(False)

    @property
    def pyramid_strides(self) -> tuple[int, ...]:
        return (4, 4, 8, self.stride, self.stride)

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

    def _frozen_modules(self) -> list[nn.Module]:
        stages = [[self.conv1, self.bn1, self.layer1], [self.layer2], [self.layer3], [self.layer4]]
        return [m for stage in stages[:self.frozen_stages] for m in stage]

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for module in self._frozen_modules():
                module.eval()
        return self

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(stem)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        return [stem, c1, c2, c3, self.layer4(c3)]

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_pyramid(x)[2:]


def _build(name: str, weights, **options) -> ResNet:
    model = ResNet(LAYERS[name], **options)
    if weights is not None:
        load_backbone_weights(model, weights, what="ResNet-50" if name == "resnet50" else "ResNet-101")
    return model


def resnet50(weights: str | os.PathLike | None = None, output_stride: int = 16, frozen_bn: bool = True,
             train_bn_affine: bool = False, frozen_stages: int = 0) -> ResNet:
    """ResNet-50 (see :class:`ResNet`; default: IRN's output stride 16, frozen
    BatchNorm) from a torchvision-format state dict (``fc.*`` reported as
    unexpected) or randomly initialised (None). IRN's CAM classifier uses
    ``train_bn_affine=True, frozen_stages=2``; its boundary network freezes
    the whole backbone itself."""
    return _build("resnet50", weights, output_stride=output_stride, frozen_bn=frozen_bn,
                  train_bn_affine=train_bn_affine, frozen_stages=frozen_stages)


def resnet101(weights: str | os.PathLike | None = None, frozen_bn: bool = True, output_stride: int = 8,
              train_bn_affine: bool = False, frozen_stages: int = 0) -> ResNet:
    """Dilated ResNet-101 (see :class:`ResNet`; default: DeepLab-v2's output
    stride 8, frozen BatchNorm) from a torchvision-format state dict (``fc.*``
    reported as unexpected) or randomly initialised (None)."""
    return _build("resnet101", weights, output_stride=output_stride, frozen_bn=frozen_bn,
                  train_bn_affine=train_bn_affine, frozen_stages=frozen_stages)
