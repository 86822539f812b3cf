"""ResNet-101 with torchvision's module names, dilated to output stride 8
as DeepLab-v2 uses it, in two layouts; :class:`ResNet`, its class, also
builds IRN's ResNet-50 (:mod:`wsss_fast.models.resnet50`).

``layout="torchvision"`` (default; torchvision ``resnet101(
replace_stride_with_dilation=[False, True, True])``, whose ImageNet weights
anyone can get): conv1 7x7 stride 2, bn1, ReLU, 3x3 stride-2 max pooling;
layer1..4 of 3, 4, 23, 3 bottlenecks (1x1, 3x3, 1x1 convolutions without
bias, each followed by BatchNorm; the stride sits in the 3x3; a 1x1 conv + BN
``downsample`` shortcut on each layer's first block). layer3 and layer4 keep
stride 1 and dilate their 3x3 convolutions by 2 and 4, except the first block
of each, which keeps the previous dilation (1 and 2). ImageNet-normalised RGB
input. Output (N, 2048, ceil(H/8), ceil(W/8)).

``layout="deeplab"``: the MSRA/Caffe ResNet-101 of DeepLab-v2 as
deeplab-pytorch builds it (libs/models/resnet.py) for its COCO-pretrained
initialisation: the stride sits in the first 1x1 convolution, every block of
layer3 / layer4 is dilated by 2 / 4 (their first included), the max pooling
rounds up (ceil_mode), and the network sees Caffe's input: BGR in 0..255
minus the mean (104.008, 116.669, 122.675), no scaling. It still takes
ImageNet-normalised RGB like every backbone here and converts it inside, so
the pipeline's transforms stay the same. Its output is h = ceil((ceil((H -
1) / 2 + 1) - 1) / 2 + 1) -> floor((h - 1) / 2) + 1 (41 for 321, 21 for 160),
not always ceil(H/8). Its weights: deeplab-pytorch's ``.pth`` files, read
with their own key names (wsss_fast.models.convert.deeplab_pytorch_state).

Output stride 16 (torchvision layout only; IRN's net/resnet50.py with
``strides=(2, 2, 2, 1)``): layer3 keeps its stride 2, layer4 stride 1 and
no dilation.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from ..errors import UsageError
from .backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone
from .weights import load_backbone_weights

LAYERS = (3, 4, 23, 3)
LAYOUTS = ("torchvision", "deeplab")
OUTPUT_STRIDES = (8, 16)
PYRAMID_CHANNELS = (64, 256, 512, 1024, 2048)
CAFFE_MEAN_BGR = (104.008, 116.669, 122.675)  # deeplab-pytorch configs/voc12.yaml IMAGE.MEAN


class Bottleneck(nn.Module):
    """torchvision's bottleneck: cin -> width (1x1) -> width (3x3, stride,
    dilation) -> 4 * width (1x1), plus the shortcut."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, stride_in_1x1: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, stride if stride_in_1x1 else 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1 if stride_in_1x1 else stride, padding=dilation,
                               dilation=dilation, bias=False)
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
    """A ResNet of bottlenecks (see the module docstring); (N, 3, H, W) ->
    (N, 2048, ceil(H / s), ceil(W / s)), s = ``output_stride``.

    Args:
        layers: bottlenecks per layer ((3, 4, 23, 3): ResNet-101; (3, 4, 6,
            3): ResNet-50).
        frozen_bn: keep BatchNorm statistics fixed (eval mode) while
            training, and its affine parameters too unless ``train_bn_affine``
            (DeepLab-v2: both fixed; default True).
        layout: "torchvision" or "deeplab" (module docstring).
        output_stride: 8 (dilated layer3 and layer4) or 16 (layer4 at stride
            1 without dilation, IRN; torchvision layout only).
        train_bn_affine: with frozen_bn, still train BatchNorm's scale and
            shift (IRN's ``FixedBatchNorm``).
        frozen_stages: 0..4, the leading stages that get no gradient and stay
            in eval mode: 1 = stem and layer1, 2 = also layer2 (IRN's CAM net
            detaches layer2's output), ... .

    ``forward_stages`` returns the outputs of layer2 (512 ch), layer3 (1024)
    and layer4 (2048): like PSA's ResNet-38 taps, the end of the last
    stride-8 stage and the two stages after it. ``forward_pyramid`` returns
    the stem (64 ch, after the max pooling, stride 4), layer1 (256, 4),
    layer2 (512, 8), layer3 and layer4: the maps IRN's boundary branch reads.
    """

    pyramid_channels = PYRAMID_CHANNELS

    def __init__(self, layers: tuple[int, int, int, int] = LAYERS, *, frozen_bn: bool = True,
                 layout: str = "torchvision", output_stride: int = 8, train_bn_affine: bool = False,
                 frozen_stages: int = 0):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"resnet: layout must be one of {LAYOUTS}, got {layout!r}")
        if output_stride not in OUTPUT_STRIDES or (output_stride != 8 and layout != "torchvision"):
            raise UsageError(f"resnet: output_stride must be one of {OUTPUT_STRIDES} (16 with the torchvision "
                             f"layout only), got {output_stride!r}")
        if isinstance(frozen_stages, bool) or frozen_stages not in range(5):
            raise UsageError(f"resnet: frozen_stages must be an int in 0..4, got {frozen_stages!r}")
        if train_bn_affine and not frozen_bn:
            raise UsageError("resnet: train_bn_affine=True needs frozen_bn=True (it says which BatchNorm "
                             "parameters of the frozen layers still train)")
        self.frozen_bn = bool(frozen_bn)
        self.train_bn_affine = bool(train_bn_affine)
        self.frozen_stages = frozen_stages
        self.layout = layout
        self.conv1 = nn.Conv2d(3, 64, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1, ceil_mode=layout == "deeplab")
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
        # keeps the dilation before it (torchvision's rule), or takes the
        # layer's (deeplab-pytorch's _ResLayer).
        first_dilation = self._dilation
        if dilate:
            self._dilation *= 2
        deeplab = self.layout == "deeplab"
        if deeplab:
            first_dilation = self._dilation
        cout = width * Bottleneck.expansion
        downsample = None
        if stride != 1 or self._cin != cout:
            downsample = nn.Sequential(nn.Conv2d(self._cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        layers = [Bottleneck(self._cin, width, stride, first_dilation, downsample, stride_in_1x1=deeplab)]
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
        if self.layout == "deeplab":
            x = caffe_input(x)
        stem = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(stem)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        return [stem, c1, c2, c3, self.layer4(c3)]

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_pyramid(x)[2:]


class ResNet101(ResNet):
    """Dilated ResNet-101 (module docstring): :class:`ResNet` with (3, 4, 23, 3)
    bottlenecks at output stride 8. Args as :class:`ResNet`'s."""

    def __init__(self, frozen_bn: bool = True, layout: str = "torchvision"):
        super().__init__(LAYERS, frozen_bn=frozen_bn, layout=layout)


def caffe_input(x: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised RGB (N, 3, H, W) -> Caffe's input: BGR in 0..255
    minus :data:`CAFFE_MEAN_BGR` (deeplab-pytorch libs/datasets/base.py:
    image -= mean_bgr, no division)."""
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    rgb = (x * std + mean) * 255.0
    return rgb.flip(1) - x.new_tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)


def resnet101(weights: str | os.PathLike | None = None, frozen_bn: bool = True,
              layout: str = "torchvision") -> ResNet101:
    """Dilated ResNet-101 (see :class:`ResNet101`) from a torchvision-format
    state dict (``fc.*`` reported as unexpected), a deeplab-pytorch file
    (``deeplabv1_resnet101-coco.pth``, whose COCO classifier is dropped, or a
    ``DeepLabV2_ResNet101_MSC`` checkpoint, whose ASPP is reported as
    unexpected; meant for ``layout="deeplab"``) or randomly initialised
    (None)."""
    from .convert import deeplab_pytorch_state, is_deeplab_pytorch
    from .weights import read_state_dict

    model = ResNet101(frozen_bn=frozen_bn, layout=layout)
    if weights is not None:
        state = read_state_dict(weights)
        if is_deeplab_pytorch(state):
            state = {k.removeprefix("backbone."): v for k, v in deeplab_pytorch_state(state)[0].items()}
        load_backbone_weights(model, state, what="ResNet-101", origin=f"weights file {weights}")
    return model
