"""Rebuilding trained networks from their final.pt (see
:mod:`wsss_fast.training`), whose metadata names the architecture."""
from __future__ import annotations

import os

from ..errors import UsageError
from ..training import load_final
from .classifier import Classifier
from .registry import build_backbone


def load_classifier(path: str | os.PathLike) -> Classifier:
    """The :class:`Classifier` saved by ``wsss-fast train-cls`` at ``path``
    (a final.pt or the folder holding it), in eval mode on the CPU."""
    payload = load_final(path)
    meta = payload["metadata"]
    if meta.get("kind") != "classifier":
        raise UsageError(f"{path} holds a {meta.get('kind', 'unknown')!r} model, not a classifier")
    backbone = build_backbone(meta["backbone"], None, **meta["backbone_options"])
    model = Classifier(backbone, meta["num_classes"], subcategories=meta["subcategories"],
                       dropout=meta["dropout"])
    model.load_state_dict(payload["model"])
    return model.eval()
