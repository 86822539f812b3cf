"""DeepLab segmentation networks of the final stage (SPEC.md, "DeepLab"):
DeepLab-v2 ASPP on any backbone (ResNet-101 in the references),
DeepLab-LargeFOV on VGG-16, and wsss-fast's decoder head.

The references' two heads map the backbone's stride-8 features to per-class
logits at the same stride. The third, "decoder" (:class:`DecoderHead`), is
for light backbones on small images: a nonlinear ASPP on the stride-8
features and DeepLab-v3+'s decoder, which brings in the backbone's stride-4
map and gives logits at stride 4. :class:`DeepLab` returns the logits, and
the caller brings them to the label size (training upsamples them bilinearly, or shrinks the labels
to them, see :func:`segmentation_loss`; inference upsamples them in
:func:`wsss_fast.inference.multiscale_maps`). :func:`msc_logits` is
deeplab-pytorch's multi-scale-input wrapper (MSC).

LargeFOV attaches to VGG-16's relu5_3 output (conv5 with dilation 2 after a
stride-1 pool4), so its backbone must return conv5 from ``forward``:
``vgg16_d1`` built with the options in :data:`DEFAULT_BACKBONES` (no DRS, no
extra convolutions of the DRS classifier).
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..palette import VOID
from .backbone import Backbone, param_groups

ASPP_RATES = (6, 12, 18, 24)
HEADS = ("aspp", "largefov", "decoder")
# Backbone name and options each head uses unless the user says otherwise.
DEFAULT_BACKBONES = {
    "aspp": ("resnet101", {}),
    "largefov": ("vgg16_d1", {"drs": "none", "extra_convs": False}),
}


class ASPP(nn.Module):
    """DeepLab-v2 atrous spatial pyramid pooling: parallel 3x3 convolutions
    with the given dilation rates, summed.

    As DeepLab-v2's head (``hidden`` False) they map straight to class logits:
    weights ~ N(0, 0.01), biases 0 (DeepLab-v2's prototxt and
    kazuto1011/deeplab-pytorch). With ``hidden`` their sum feeds a BatchNorm
    and a ReLU (:class:`DecoderHead`): no biases, Kaiming-normal weights.
    (N, in_channels, h, w) -> (N, out_channels, h, w).
    """

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int] = ASPP_RATES,
                 hidden: bool = False):
        super().__init__()
        if not rates:
            raise ValueError("ASPP: needs at least one dilation rate")
        if any(int(r) != r or r < 1 for r in rates):
            raise ValueError(f"ASPP: dilation rates must be integers >= 1, got {list(rates)}")
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, out_channels, 3, padding=r, dilation=r, bias=not hidden) for r in rates)
        for conv in self.branches:
            if hidden:
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            else:
                nn.init.normal_(conv.weight, std=0.01)
                nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for conv in self.branches[1:]:
            out = out + conv(x)
        return out


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    """Convolution (no bias, 'same' padding for odd kernels), BatchNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class DecoderHead(nn.Module):
    """A segmentation head for light backbones (wsss-fast's, not the
    references'): DeepLab-v2's summed ASPP made nonlinear, then
    DeepLab-v3+'s decoder.

    The coarse map (the backbone's output) goes through :class:`ASPP` with
    ``hidden`` (to ``aspp_channels``), BatchNorm and ReLU, and is upsampled
    (bilinear, align_corners False) to the fine map's grid; the fine map (the
    first of the backbone's pyramid, stride 4) is projected by a 1x1
    convolution to 48 channels (BatchNorm, ReLU, as DeepLab-v3+); both,
    concatenated, go through a 3x3 convolution to ``fused_channels``
    (BatchNorm, ReLU) and a 1x1 convolution to class logits, initialised to
    zero (every class equal at the start). Other layers: PyTorch's default
    initialisation.

    DeepLab-v2's ASPP is linear on ResNet-101's 2048 channels; on
    EfficientNet-Lite0's 112 it underfits its labels (README, "Why DeepLab fell short"), and
    stride-8 logits blur the small objects of 128 px images.

    (N, coarse_channels, h, w), (N, fine_channels, H, W) -> (N, num_classes, H, W).
    """

    FINE_PROJECTION = 48

    def __init__(self, coarse_channels: int, fine_channels: int, num_classes: int,
                 rates: Sequence[int] = ASPP_RATES, aspp_channels: int = 128, fused_channels: int = 128):
        super().__init__()
        self.aspp = ASPP(coarse_channels, aspp_channels, rates, hidden=True)
        self.aspp_norm = nn.Sequential(nn.BatchNorm2d(aspp_channels), nn.ReLU(inplace=True))
        self.fine = conv_bn_relu(fine_channels, self.FINE_PROJECTION, 1)
        self.fuse = conv_bn_relu(aspp_channels + self.FINE_PROJECTION, fused_channels, 3)
        self.classifier = nn.Conv2d(fused_channels, num_classes, 1)
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        context = self.aspp_norm(self.aspp(coarse))
        context = F.interpolate(context, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([context, self.fine(fine)], 1)))


class LargeFOV(nn.Module):
    """DeepLab-LargeFOV head on VGG-16 conv5 features: pool5 (3x3 max,
    stride 1), fc6 (3x3, dilation 12, ``hidden`` channels), ReLU, dropout
    0.5, fc7 (1x1, ``hidden``), ReLU, dropout 0.5, fc8 (1x1, classes).

    DeepLab initialises fc6/fc7 from subsampled ImageNet fc layers; here they
    are new (Kaiming normal for ReLU, biases 0) and fc8 is N(0, 0.01) as in
    DeepLab. (N, in_channels, h, w) -> (N, num_classes, h, w).
    """

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 1024, dropout: float = 0.5):
        super().__init__()
        self.pool5 = nn.MaxPool2d(3, stride=1, padding=1)
        self.fc6 = nn.Conv2d(in_channels, hidden, 3, padding=12, dilation=12)
        self.fc7 = nn.Conv2d(hidden, hidden, 1)
        self.fc8 = nn.Conv2d(hidden, num_classes, 1)
        self.dropout = nn.Dropout(dropout)
        for conv in (self.fc6, self.fc7):
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        nn.init.normal_(self.fc8.weight, std=0.01)
        nn.init.zeros_(self.fc8.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(F.relu(self.fc6(self.pool5(x))))
        x = self.dropout(F.relu(self.fc7(x)))
        return self.fc8(x)


class DeepLab(nn.Module):
    """A backbone and a segmentation head.

    Args:
        backbone: (N, 3, H, W) -> (N, D, ceil(H / 8), ceil(W / 8)) features;
            for the "decoder" head also ``forward_pyramid``, whose first map
            is finer than the output (stride 4).
        num_classes: classes including background.
        head: "aspp", "largefov" or "decoder".
        rates: the ASPP's dilation rates ("aspp" and "decoder"; DeepLab-v2's
            6, 12, 18, 24 are set for 321 px crops, a 41-cell grid at stride
            8; on a 12-16 cell grid most of their taps fall outside the map).
    """

    def __init__(self, backbone: Backbone, num_classes: int, head: str = "aspp",
                 rates: Sequence[int] = ASPP_RATES):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"DeepLab: head must be one of {HEADS}, got {head!r}")
        if num_classes < 2:
            raise ValueError(f"DeepLab: num_classes (background included) must be >= 2, got {num_classes}")
        if head == "largefov" and tuple(rates) != ASPP_RATES:
            raise ValueError("DeepLab: the largefov head has no ASPP rates (its fc6 has dilation 12)")
        if head == "decoder" and not backbone.pyramid_strides[0] < backbone.stride:
            raise ValueError(f"DeepLab: the decoder head needs a backbone whose pyramid starts finer than its "
                             f"stride-{backbone.stride} output; {type(backbone).__name__}'s starts at stride "
                             f"{backbone.pyramid_strides[0]}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.head_name = head
        self.rates = tuple(int(r) for r in rates)
        if head == "aspp":
            self.head = ASPP(backbone.out_channels, num_classes, self.rates)
        elif head == "largefov":
            self.head = LargeFOV(backbone.out_channels, num_classes)
        else:
            self.head = DecoderHead(backbone.out_channels, backbone.pyramid_channels[0], num_classes, self.rates)

    def forward(self, x: torch.Tensor, msc: Sequence[float] = ()) -> torch.Tensor | list[torch.Tensor]:
        """(N, 3, H, W) normalised images -> (N, num_classes, h, w) logits at
        the backbone's stride (h = ceil(H / 8) for stride 8; the decoder
        head: its pyramid's first stride, ceil(H / 4)); with ``msc``
        scales, the list of :func:`msc_logits` (one forward call, so that
        DistributedDataParallel sees one pass per step)."""
        if msc:
            return msc_logits(self._logits, x, msc)
        return self._logits(x)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.head_name == "decoder":
            maps = self.backbone.forward_pyramid(x)
            return self.head(maps[-1], maps[0])
        return self.head(self.backbone(x))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The four learning-rate groups (see :func:`param_groups`); the head is new."""
        return param_groups(self, new_prefixes=("head.",))


LOSS_AT = ("image", "logits")


def msc_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
               scales: Sequence[float]) -> list[torch.Tensor]:
    """deeplab-pytorch's MSC (libs/models/msc.py): the logits ``model`` gives for ``x``, for
    ``x`` resized by each factor of ``scales`` (bilinear, align_corners
    False, ``scale_factor`` as given, so each side is floor(side * s)), and
    their element-wise maximum after resizing each to the first one's grid
    (bilinear, align_corners False): ``[l_1, l_s1, l_s2, ..., l_max]``.
    Training takes a loss of each; inference takes ``l_max``."""
    logits = model(x)
    pyramid = [model(F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)) for s in scales]
    size = logits.shape[-2:]
    resized = [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pyramid]
    return [logits, *pyramid, torch.stack([logits, *resized]).amax(0)]


@functools.lru_cache(maxsize=256)
def pil_nearest_index(n_out: int, n_in: int) -> tuple[int, ...]:
    """Source indices of PIL's ``resize(NEAREST)`` along one axis (Pillow's
    ImagingScaleAffine: position ``a / 2``, then ``+= a`` per output pixel in
    float64, ``a = n_in / n_out``, truncated); the running sum's rounding is
    part of the result (300 -> 38 takes row 74, not 75, for output row 9)."""
    step, position, out = n_in / n_out, n_in / n_out * 0.5, []
    for _ in range(n_out):
        out.append(min(int(position), n_in - 1))
        position += step
    return tuple(out)


def shrink_labels(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Label maps (..., H, W) resized to ``size`` = (h, w) by nearest
    neighbour exactly as PIL's ``Image.resize(NEAREST)`` (deeplab-pytorch's
    main.py resize_labels); see :func:`pil_nearest_index`."""
    height, width = target.shape[-2:]
    rows = torch.tensor(pil_nearest_index(int(size[0]), height), device=target.device)
    cols = torch.tensor(pil_nearest_index(int(size[1]), width), device=target.device)
    return target[..., rows[:, None], cols[None, :]]


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, at: str = "image") -> torch.Tensor:
    """Cross-entropy of ``logits`` (N, C, h, w) (stride 8, or 4 with the
    decoder head) against label maps ``target`` (N, H, W) int64 (255
    ignored), averaged over labelled pixels.

    ``at`` "image" (default) upsamples the logits bilinearly
    (align_corners=False) to (H, W), so every labelled pixel counts; "logits"
    shrinks the labels to (h, w) instead (:func:`shrink_labels`), as the
    references (deeplab-pytorch) do. A batch without any labelled pixel
    gives 0 (not NaN) and no gradient.
    """
    if at not in LOSS_AT:
        raise ValueError(f"segmentation_loss: at must be one of {LOSS_AT}, got {at!r}")
    if at == "image":
        logits = F.interpolate(logits.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
    else:
        logits, target = logits.float(), shrink_labels(target, logits.shape[-2:])
    total = F.cross_entropy(logits, target, ignore_index=VOID, reduction="sum")
    return total / (target != VOID).sum().clamp(min=1)
