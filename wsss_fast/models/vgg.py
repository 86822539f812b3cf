"""VGG-16 "D1", the backbone of DRS, with DRS modules in place of its ReLUs.

Layout (DRS's ``models/vgg.py``, configuration D1): the 13 3x3 convolutions
of VGG-16 (padding 1, with bias); 2x2 stride-2 max pooling after conv1_2,
conv2_2 and conv3_3; pool4 a 3x3 stride-1 max pooling with padding 1; conv5_x
with dilation 2 and padding 2; no pool5. Then three new 3x3 512 -> 512
convolutions (padding 1, with bias), each followed by an activation. The 16
activations (13 + 3) are ReLUs or DRS modules. Output stride 8.

One deliberate difference: the three stride-2 poolings use ``ceil_mode`` so
that outputs are ``ceil(H / 8)`` like every backbone here; the reference
floors. Both agree on sizes that are multiples of 8, which is everything the
reference feeds the network (crops of 320, test sizes 256 / 320 / 384).

Module names follow torchvision's ``vgg16`` (``features.0`` ... ``features.28``
for the convolutions), so its state dicts load as they are; the new layers
are ``extra.0``, ``extra.2``, ``extra.4`` (convolutions) and, with learnable
DRS, ``*.controller`` (C x C linear layers).

Initialisation of the new layers as DRS: convolutions normal with standard
deviation sqrt(2 / (9 * 512)) and zero bias, DRS controllers normal(0, 0.01).
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable

import torch
from torch import nn

from ..errors import UsageError
from ..nn import DRS, DRS_DELTA, DRS_MODES
from .backbone import Backbone
from .weights import load_backbone_weights

# Output channels of the convolutions of each VGG-16 block.
_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
_EXTRA_CONVS = 3
NUM_ACTIVATIONS = sum(map(len, _BLOCKS)) + _EXTRA_CONVS  # 16


def _conv_init(conv: nn.Conv2d) -> None:
    # He initialisation over fan-out, as torchvision's VGG and DRS's new layers.
    n = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / n))
    nn.init.zeros_(conv.bias)


def _parse_layers(drs_layers) -> frozenset[int]:
    if isinstance(drs_layers, str):
        try:
            drs_layers = [int(tok) for tok in drs_layers.split(",") if tok.strip()]
        except ValueError:
            raise UsageError(f"vgg16_d1: drs_layers must be comma-separated integers, got {drs_layers!r}") from None
    if not isinstance(drs_layers, Iterable):
        raise UsageError(f"vgg16_d1: drs_layers must be a list of layer numbers, got {drs_layers!r}")
    layers = list(drs_layers)
    bad = [v for v in layers if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= NUM_ACTIVATIONS]
    if bad:
        raise UsageError(f"vgg16_d1: drs_layers must be in 1..{NUM_ACTIVATIONS} (ReLU positions: 13 VGG "
                         f"convolutions, then 3 extra ones), got {', '.join(map(repr, bad))}")
    return frozenset(layers)


class VGG16D1(Backbone):
    """VGG-16 D1 (see the module docstring).

    Args:
        drs: "learnable" (DRS with a learnable controller), "delta" (DRS with
            the constant ``delta``) or "none" (plain ReLUs, e.g. for DRS's
            refinement network).
        delta: the constant suppression level of ``drs="delta"``, in [0, 1]
            (default 0.55, the paper's best); only with ``drs="delta"``.
        drs_layers: 1-based positions of the activations that become DRS
            modules: 1..13 follow the VGG convolutions (conv1_1 ... conv5_3),
            14..16 the extra convolutions. Default: all 16 (13 without extra
            convolutions). A list of ints or a comma-separated string.
        extra_convs: False leaves out the three extra convolutions, so that
            the output is relu5_3, the features DeepLab-LargeFOV's head takes.

    ``forward_stages`` returns relu4_3 (the end of the last downsampling
    block), relu5_3 and the last extra activation (relu5_3 again without
    extra convolutions): (N, 512, ceil(H/8), ceil(W/8)) each, the depths PSA's
    VGG AffinityNet takes (conv4, conv5 and the network's last features).
    """

    def __init__(self, drs: str = "none", delta: float | None = None, drs_layers=None,
                 extra_convs: bool = True):
        super().__init__()
        num_activations = NUM_ACTIVATIONS if extra_convs else NUM_ACTIVATIONS - _EXTRA_CONVS
        if drs not in DRS_MODES:
            raise UsageError(f"vgg16_d1: drs must be one of {', '.join(DRS_MODES)}, got {drs!r}")
        if delta is not None and drs != "delta":
            raise UsageError(f"vgg16_d1: delta is only used with drs='delta' (drs is {drs!r})")
        if drs == "none" and drs_layers is not None:
            raise UsageError("vgg16_d1: drs_layers needs drs='learnable' or 'delta'")
        if drs == "delta":
            delta = DRS_DELTA if delta is None else delta
            if not isinstance(delta, (int, float)) or not (math.isfinite(delta) and 0.0 <= delta <= 1.0):
                raise UsageError(f"vgg16_d1: delta must be in [0, 1], got {delta!r}")
        layers = frozenset() if drs == "none" else (
            frozenset(range(1, num_activations + 1)) if drs_layers is None else _parse_layers(drs_layers))
        if max(layers, default=0) > num_activations:
            raise UsageError(f"vgg16_d1: drs_layers {sorted(v for v in layers if v > num_activations)} "
                             "are extra convolutions, which extra_convs=False leaves out")
        self.drs = drs
        self.delta = float(delta) if drs == "delta" else None
        self.drs_layers = tuple(sorted(layers))

        position = 0

        def activation(channels: int) -> nn.Module:
            nonlocal position
            position += 1
            if position not in layers:
                return nn.ReLU(inplace=True)
            module = DRS(channels, self.delta)
            if module.controller is not None:
                nn.init.normal_(module.controller.weight, 0.0, 0.01)
            return module

        features: list[nn.Module] = []
        cin = 3
        for b, widths in enumerate(_BLOCKS):
            dilation = 2 if b == 4 else 1
            for cout in widths:
                features += [nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation), activation(cout)]
                cin = cout
            if b < 3:
                features.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            elif b == 3:
                self._conv4_end = len(features) - 1  # index of relu4_3, before pool4
                features.append(nn.MaxPool2d(3, 1, padding=1))
        self.features = nn.Sequential(*features)
        extra: list[nn.Module] = []
        for _ in range(_EXTRA_CONVS if extra_convs else 0):
            extra += [nn.Conv2d(512, 512, 3, padding=1), activation(512)]
        self.extra = nn.Sequential(*extra)  # empty: the identity
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _conv_init(m)

        self.out_channels = 512
        self.stride = 8
        self.stage_channels = (512, 512, 512)
        self.stage_strides = (8, 8, 8)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        conv4 = None
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == self._conv4_end:
                conv4 = x
        conv5 = x
        return [conv4, conv5, self.extra(conv5)]

    def is_new(self, name: str) -> bool:
        return name.startswith("extra.") or ".controller." in name


def vgg16_d1(weights: str | os.PathLike | None = None, drs: str = "none", delta: float | None = None,
             drs_layers=None, extra_convs: bool = True) -> VGG16D1:
    """VGG-16 D1 (see :class:`VGG16D1` for the options), initialised from a
    torchvision-format VGG-16 state dict (``features.N.weight/bias``;
    ``classifier.*`` reported as unexpected) or randomly (``weights=None``)."""
    model = VGG16D1(drs=drs, delta=delta, drs_layers=drs_layers, extra_convs=extra_convs)
    if weights is not None:
        load_backbone_weights(model, weights, what="VGG-16")
    return model
