"""Backbones by name, built with weights from a file the user gives."""
from __future__ import annotations

import importlib
import inspect
import os

from ..errors import UsageError
from .backbone import Backbone

# name -> "module:factory"; each factory takes ``weights`` (a file path,
# "imagenet" where a pip package ships ImageNet weights, or None for random
# initialisation) and keyword options, and returns a Backbone.
BACKBONES = {
    "scratch": "wsss_fast.models.scratch:ScratchCNN",
    "vgg16_d1": "wsss_fast.models.vgg:vgg16_d1",
    "resnet38": "wsss_fast.models.resnet38:resnet38",
    "resnet50": "wsss_fast.models.resnet50:resnet50",
    "resnet101": "wsss_fast.models.resnet101:resnet101",
    "efficientnet_lite0": "wsss_fast.models.efficientnet:efficientnet_lite0",
}


def _factory(name: str):
    if name not in BACKBONES:
        raise UsageError(f"unknown backbone {name!r}; choose one of {', '.join(sorted(BACKBONES))}")
    module, attr = BACKBONES[name].split(":")
    return getattr(importlib.import_module(module), attr)


def build_backbone(name: str, weights: str | os.PathLike | None = None, **options) -> Backbone:
    """Builds backbone ``name`` with ``options`` (see its factory) and loads
    ``weights``. Unknown names and options are UsageErrors that name them."""
    factory = _factory(name)
    params = inspect.signature(factory).parameters
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = [k for k in options if k not in params and not accepts_any]
    if unknown:
        allowed = sorted(k for k in params if k not in ("self", "weights"))
        raise UsageError(f"backbone {name!r} has no option {', '.join(map(repr, unknown))}; "
                         f"its options: {', '.join(allowed) or 'none'}")
    if "weights" in params:
        return factory(weights=weights, **options)
    if weights is not None:
        raise UsageError(f"backbone {name!r} is always randomly initialised; it takes no weights")
    return factory(**options)
