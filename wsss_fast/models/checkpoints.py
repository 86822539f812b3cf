"""Rebuilding trained networks from the ``final.pt`` a training stage wrote.

A final.pt (see :class:`wsss_fast.training.Trainer`) holds ``model`` (the
state dict), ``config`` and ``metadata``, which says how to rebuild the
network::

    kind              "classifier" (train-cls), "refine" (train-refine),
                      "segmentation" (train-seg), "affinity" (train-aff) or
                      "irn" (train-irn)
    backbone          registry name (wsss_fast.models.BACKBONES)
    backbone_options  keyword options of that backbone's factory
    num_classes       C, object classes (background excluded); segmentation:
                      C + 1, the classes of its output (background included)
    class_names       background first
    subcategories     classifiers only: K of SC-CAM's second head, or 0
    dropout           classifiers only: dropout before the heads
    head_bias         classifiers only: whether the class head has a bias
                      (absent: False)
    method            "cam", "drs" or "sccam" (refine: the classifier's, "drs")
    head              segmentation only: "aspp", "largefov" or "decoder"
    aspp_rates        segmentation only: the ASPP's dilation rates (absent:
                      DeepLab-v2's 6, 12, 18, 24)
    radius, head_norm affinity only: pair radius and the head's normalisation
    radius, crop      irn only: training pair radius and crop (the walk pads
                      images to the crop, as IRN)

The backbone is built without pretrained weights (the state dict replaces
them). Every error names the file.
"""
from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from ..errors import UsageError
from ..training import FINAL, load_final
from .affinity_net import AffinityNet
from .classifier import Classifier
from .deeplab import ASPP_RATES, DeepLab
from .irn import BoundaryNet
from .refine import RefineNet
from .registry import build_backbone

KINDS = ("classifier", "refine")
REQUIRED = ("kind", "backbone", "backbone_options", "num_classes")


def resolve_final(path: str | os.PathLike) -> Path:
    """``path`` itself, or ``path/final.pt`` for a training output folder."""
    path = Path(path)
    return path / FINAL if path.is_dir() else path


def read_checkpoint(path: str | os.PathLike, kinds: tuple[str, ...] = KINDS) -> tuple[dict, dict]:
    """(state dict, metadata) of a final.pt whose kind is one of ``kinds``.

    Raises UsageError naming the file when it is missing, unreadable, not a
    wsss-fast model, of another kind, or lacks metadata.
    """
    path = resolve_final(path)
    payload = load_final(path)
    meta = payload["metadata"]
    if not isinstance(meta, dict):
        raise UsageError(f"{path}: metadata is not a dict")
    kind = meta.get("kind")
    if kind not in kinds:
        raise UsageError(f"{path} holds a {kind!r} model; expected {' or '.join(map(repr, kinds))}")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise UsageError(f"{path}: metadata lacks {', '.join(missing)}")
    return payload["model"], meta


def _load_state(model: nn.Module, state: dict, path: Path, what: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise UsageError(f"{path}: its weights do not fit the {what} its metadata describes: "
                         f"{detail[:300]}") from None


def build_model(state: dict, meta: dict, path: str | os.PathLike) -> nn.Module:
    """The network of a checkpoint (:func:`read_checkpoint`), weights loaded, in eval mode."""
    path = resolve_final(path)
    backbone = build_backbone(meta["backbone"], None, **meta["backbone_options"])
    if meta["kind"] == "classifier":
        model = Classifier(backbone, int(meta["num_classes"]),
                           subcategories=int(meta.get("subcategories") or 0),
                           dropout=float(meta.get("dropout") or 0.0),
                           head_bias=bool(meta.get("head_bias", False)))
    elif meta["kind"] == "segmentation":
        model = DeepLab(backbone, int(meta["num_classes"]), meta.get("head", "aspp"),
                        meta.get("aspp_rates", ASPP_RATES))
    elif meta["kind"] == "affinity":
        model = AffinityNet(backbone, radius=int(meta["radius"]), head_norm=meta["head_norm"])
    elif meta["kind"] == "irn":
        model = BoundaryNet(backbone)
    else:
        model = RefineNet(backbone, int(meta["num_classes"]))
    _load_state(model, state, path, f"{meta['backbone']} {meta['kind']}")
    return model.eval()


def load_classifier(path: str | os.PathLike) -> Classifier:
    """The :class:`Classifier` saved in a train-cls final.pt (or its folder)."""
    state, meta = read_checkpoint(path, ("classifier",))
    return build_model(state, meta, path)


def load_refine(path: str | os.PathLike) -> RefineNet:
    """The :class:`RefineNet` saved in a train-refine final.pt (or its folder)."""
    state, meta = read_checkpoint(path, ("refine",))
    return build_model(state, meta, path)


def load_affinity_net(path: str | os.PathLike) -> AffinityNet:
    """The :class:`AffinityNet` saved in a train-aff final.pt (or its folder)."""
    state, meta = read_checkpoint(path, ("affinity",))
    return build_model(state, meta, path)


def load_boundary_net(path: str | os.PathLike) -> tuple[BoundaryNet, dict]:
    """The :class:`BoundaryNet` saved in a train-irn final.pt (or its folder)
    and its metadata (``crop`` ...)."""
    state, meta = read_checkpoint(path, ("irn",))
    return build_model(state, meta, path), meta


def load_cam_model(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """A classifier or a refinement network (both have ``class_maps``) and
    its metadata, for CAM inference."""
    state, meta = read_checkpoint(path)
    return build_model(state, meta, path), meta


def load_deeplab(path: str | os.PathLike) -> tuple[DeepLab, dict]:
    """The :class:`DeepLab` network saved in a train-seg final.pt (or its
    folder) and its metadata (``class_names`` ...)."""
    state, meta = read_checkpoint(path, ("segmentation",))
    return build_model(state, meta, path), meta
