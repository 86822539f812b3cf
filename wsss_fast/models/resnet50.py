"""ResNet-50 with torchvision's module names as IRN's CAM and boundary
networks use it (jiwoon-ahn/irn net/resnet50.py: strides (2, 2, 2, 1), so
output stride 16 with layer4 neither strided nor dilated), on the ResNet
class of :mod:`wsss_fast.models.resnet101`."""
from __future__ import annotations

import os

from .resnet101 import ResNet
from .weights import load_backbone_weights

LAYERS = (3, 4, 6, 3)


def resnet50(weights: str | os.PathLike | None = None, output_stride: int = 16, frozen_bn: bool = True,
             train_bn_affine: bool = False, frozen_stages: int = 0) -> ResNet:
    """ResNet-50 (see :class:`~wsss_fast.models.resnet101.ResNet`; default:
    IRN's output stride 16, frozen BatchNorm; 8 dilates layer3 and layer4 as
    DeepLab's ResNet-101) from a torchvision-format state dict (IRN's
    ``resnet50-19c8e357.pth``; ``fc.*`` reported as unexpected) or randomly
    initialised (None). IRN's CAM classifier uses ``train_bn_affine=True,
    frozen_stages=2``; its boundary network freezes the whole backbone itself."""
    model = ResNet(LAYERS, frozen_bn=frozen_bn, output_stride=output_stride, train_bn_affine=train_bn_affine,
                   frozen_stages=frozen_stages)
    if weights is not None:
        load_backbone_weights(model, weights, what="ResNet-50")
    return model
