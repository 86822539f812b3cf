"""The interface every backbone implements, and parameter groups for the
references' learning-rate multipliers.

A backbone maps an ImageNet-normalised RGB batch (N, 3, H, W), float, to
feature maps at a fixed output stride. Classifiers use the last map;
AffinityNet uses the last three (``forward_stages``); IRN's boundary network
a pyramid that starts at stride 4 (``forward_pyramid``).
"""
from __future__ import annotations

import torch
from torch import nn

# ImageNet statistics of RGB in [0, 1]; every backbone here expects inputs
# normalised with them (torchvision, PSA and the EfficientNet weights do).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """Base class of the backbones.

    Subclasses set, in ``__init__``:
        out_channels: channels of ``forward``'s output.
        stride: output stride of ``forward`` (input pixels per feature cell),
            8 for the backbones of PSA, SC-CAM and DRS, 16 for IRN's ResNet-50.
        stage_channels: channels of the maps ``forward_stages`` returns.
        stage_strides: their output strides (4, 8 or 16; the last is ``stride``).
        frozen_bn: True when the references keep BatchNorm statistics and
            affine parameters fixed while training (PSA's ResNet-38); the
            trainer then keeps BN layers in eval mode and their parameters
            out of the optimiser.
        train_bn_affine: with frozen_bn, the BN affine parameters still train
            (IRN's FixedBatchNorm); default False.
    and implement ``forward_stages``. Backbones with finer maps than their
    stages (ResNet's stride-4 stem and layer1) override ``forward_pyramid``,
    ``pyramid_channels`` and ``pyramid_strides``. They override ``is_new``
    when some of their parameters are not covered by the pretrained weights
    (VGG-16 D1's extra convolutions and DRS controllers), so that those get
    the higher learning rates of new layers.

    ``load_report`` is the :class:`~wsss_fast.models.weights.LoadReport` of
    the pretrained weights the backbone was built with (None: random init).
    """

    out_channels: int
    stride: int
    stage_channels: tuple[int, ...]
    stage_strides: tuple[int, ...]
    frozen_bn: bool = False
    train_bn_affine: bool = False
    load_report = None

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of the last three stages, (N, stage_channels[i],
        ceil(H / stage_strides[i]), ceil(W / stage_strides[i])), shallowest
        first; the last is ``forward(x)``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, out_channels, ceil(H / stride), ceil(W / stride)) features."""
        return self.forward_stages(x)[-1]

    @property
    def pyramid_channels(self) -> tuple[int, ...]:
        """Channels of the maps ``forward_pyramid`` returns."""
        return self.stage_channels

    @property
    def pyramid_strides(self) -> tuple[int, ...]:
        """Their output strides, non-decreasing (IRN's branch needs 4 first)."""
        return self.stage_strides

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps from fine to coarse, (N, pyramid_channels[i],
        ceil(H / pyramid_strides[i]), ceil(W / pyramid_strides[i])); by
        default those of ``forward_stages``."""
        return self.forward_stages(x)

    def is_new(self, name: str) -> bool:
        """Whether parameter ``name`` (relative to this module) is new, i.e.
        not initialised from pretrained weights."""
        return False

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.frozen_bn:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


def param_groups(model: nn.Module, new_prefixes: tuple[str, ...] = ()) -> dict[str, list[nn.Parameter]]:
    """Splits the trainable parameters of ``model`` into the references'
    four groups: ``pretrained_weight``, ``pretrained_bias``, ``new_weight``,
    ``new_bias`` (biases: 1-D parameters named ``*.bias``).

    A parameter is new when its name starts with one of ``new_prefixes``
    (e.g. the classifier head) or when a :class:`Backbone` submodule says so
    with ``is_new``. Parameters of frozen BatchNorm layers are left out
    (unless the backbone trains their affine parameters, ``train_bn_affine``),
    and so are parameters that do not require gradients.
    """
    frozen = set()
    new_names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, Backbone):
            for name, _ in module.named_parameters():
                if module.is_new(name):
                    new_names.add(f"{prefix}.{name}" if prefix else name)
            if module.frozen_bn and not module.train_bn_affine:
                for sub in module.modules():
                    if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                        frozen.update(id(p) for p in sub.parameters())
    groups = {"pretrained_weight": [], "pretrained_bias": [], "new_weight": [], "new_bias": []}
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in frozen:
            continue
        new = name in new_names or name.startswith(new_prefixes)
        kind = "bias" if name.endswith(".bias") else "weight"
        groups[f"{'new' if new else 'pretrained'}_{kind}"].append(p)
    return groups
