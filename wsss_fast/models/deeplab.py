"""DeepLab segmentation networks of the final stage (SPEC.md, "DeepLab"):
DeepLab-v2 ASPP on any backbone (ResNet-101 in the references) and
DeepLab-LargeFOV on VGG-16.

Both heads map the backbone's stride-8 features to per-class logits at the
same stride; :class:`DeepLab` returns those logits, and the caller brings them
to the label size (training upsamples them bilinearly, or shrinks the labels
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
HEADS = ("aspp", "largefov")
# Backbone name and options each head uses unless the user says otherwise.
DEFAULT_BACKBONES = {
    "aspp": ("resnet101", {}),
    "largefov": ("vgg16_d1", {"drs": "none", "extra_convs": False}),
}


class ASPP(nn.Module):
    """DeepLab-v2 atrous spatial pyramid pooling: parallel 3x3 convolutions
    with the given dilation rates straight to class logits, summed.

    Weights ~ N(0, 0.01), biases 0 (DeepLab-v2's prototxt and
    kazuto1011/deeplab-pytorch). (N, in_channels, h, w) -> (N, num_classes, h, w).
    """

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = ASPP_RATES):
        super().__init__()
        if not rates:
            raise ValueError("ASPP: needs at least one dilation rate")
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r) for r in rates)
        for conv in self.branches:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for conv in self.branches[1:]:
            out = out + conv(x)
        return out


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
        backbone: (N, 3, H, W) -> (N, D, ceil(H / 8), ceil(W / 8)) features.
        num_classes: classes including background.
        head: "aspp" or "largefov".
    """

    def __init__(self, backbone: Backbone, num_classes: int, head: str = "aspp"):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"DeepLab: head must be one of {HEADS}, got {head!r}")
        if num_classes < 2:
            raise ValueError(f"DeepLab: num_classes (background included) must be >= 2, got {num_classes}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.head_name = head
        self.head = (ASPP if head == "aspp" else LargeFOV)(backbone.out_channels, num_classes)

    def forward(self, x: torch.Tensor, msc: Sequence[float] = ()) -> torch.Tensor | list[torch.Tensor]:
        """(N, 3, H, W) normalised images -> (N, num_classes, h, w) logits at
        the backbone's stride (h = ceil(H / 8) for stride 8); with ``msc``
        scales, the list of :func:`msc_logits` (one forward call, so that
        DistributedDataParallel sees one pass per step)."""
        if msc:
            return msc_logits(self._logits, x, msc)
        return self._logits(x)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
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
    """Cross-entropy of stride-8 ``logits`` (N, C, h, w) against label maps
    ``target`` (N, H, W) int64 (255 ignored), averaged over labelled pixels.

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
