"""Training AffinityNet (``wsss-fast train-aff``; PSA's train_aff).

Reads the images of a split, the low/high-alpha CRF score maps of
``make-aff-labels`` (``<labels>/la``, ``<labels>/ha``) and optional initial
weights (ImageNet file or a classifier's final.pt); writes the training run
folder (``final.pt``, ``checkpoint.pt``, ``log.jsonl``, see
:mod:`wsss_fast.training`).

Each training item is an image with its low/high-alpha CRF marginals from
:func:`wsss_fast.stages.affinity_labels.make_affinity_labels`; the augmentation crops
and flips them together, block-averages the marginals to the network's grid
and turns them into a label map (:func:`~wsss_fast.stages.affinity_labels.label_from_scores`);
the loss builds the labelled pairs of each batch on the device
(:func:`~wsss_fast.stages.affinity_labels.pair_labels`) and applies
:func:`~wsss_fast.models.affinity_net.affinity_loss`.

PSA's defaults (train_aff.py): batch 8, 8 epochs, SGD lr 0.1 with poly 0.9
decay per step, lr x1/x2/x10/x20 for pretrained weight/bias and new
weight/bias, weight decay 5e-4 on weights, random 448 crop (no rescaling),
horizontal flip, colour jitter (0.3, 0.3, 0.3, 0.1). PSA's PolyOptimizer
hands its weight decay to SGD's momentum slot, so its momentum is 5e-4
(reproduced here).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .affinity_labels import label_from_scores, label_paths, load_label_scores, pair_labels
from ..data.dataset import ImagesWith, VOCSegmentation, collate_skip_none
from ..errors import DataError, UsageError
from ..models.affinity_net import AffinityNet, affinity_loss, default_head_norm
from ..models.initial import BackboneInit, initial_backbone
from ..training import EpochDataset, Trainer, TrainConfig
from ..transforms import TrainAugment


def psa_train_config(**changes) -> TrainConfig:
    """PSA's train_aff optimisation settings (module docstring), with changes."""
    settings = dict(epochs=8, batch_size=8, lr=0.1, weight_decay=5e-4, momentum=5e-4,
                    schedule="poly", poly_power=0.9, lr_mult=(1.0, 2.0, 10.0, 20.0))
    settings.update(changes)
    return TrainConfig(**settings)


@dataclass
class AugmentSettings:
    """PSA's train_aff augmentation: random ``crop`` (448), flip, jitter; no
    rescaling unless ``resize_long`` = (min, max) long side is given."""
    crop: int = 448
    resize_long: tuple[int, int] | None = None
    jitter: tuple[float, float, float, float] | None = (0.3, 0.3, 0.3, 0.1)
    flip: bool = True


class AffinityLabelSet(ImagesWith):
    """Images of a split with their affinity-label marginals.

    Items: ``name``, ``image`` uint8 (3, H, W), ``keys`` int64 (K + 1,),
    ``low`` and ``high`` float32 (K + 1, H, W); None for a skipped corrupt
    image. Missing label files are reported when the set is built.
    """

    def __init__(self, images: VOCSegmentation, label_dir: str | os.PathLike):
        super().__init__(images)
        self.label_dir = Path(label_dir)
        missing = [n for n in images.names if not all(p.is_file() for p in label_paths(label_dir, n))]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise DataError(f"no affinity labels for {', '.join(map(repr, missing[:3]))}{more} in "
                            f"{self.label_dir} (run wsss-fast make-aff-labels first)")

    def extras(self, item: dict) -> dict:
        keys, low, high = load_label_scores(self.label_dir, item["name"])
        if low.shape[1:] != tuple(item["image"].shape[1:]):
            raise DataError(f"affinity labels of '{item['name']}' in {self.label_dir} are "
                            f"{low.shape[2]}x{low.shape[1]} but the image is "
                            f"{item['image'].shape[2]}x{item['image'].shape[1]}")
        return {"keys": torch.from_numpy(keys), "low": torch.from_numpy(low), "high": torch.from_numpy(high)}


class AffinityAugment:
    """``augment(item, rng)`` for :class:`AffinityLabelSet` items: the
    geometric and colour augmentation of :class:`TrainAugment` applied to the
    image and both marginals, then the label map at the network's stride.
    Returns ``name``, ``image`` float32 (3, crop, crop) and ``aff_label``
    int64 (ceil(crop / stride), ceil(crop / stride))."""

    def __init__(self, settings: AugmentSettings, stride: int):
        self.transform = TrainAugment(settings.crop, resize_long=settings.resize_long,
                                      flip=settings.flip, jitter=settings.jitter, label_keys=(),
                                      score_keys=("low", "high"))
        self.stride = stride

    def __call__(self, item: dict, rng: np.random.Generator) -> dict:
        item = self.transform(item, rng)
        label = label_from_scores(item["low"], item["high"], item["keys"], self.stride)
        return {"name": item["name"], "image": item["image"], "aff_label": label}


def affinity_loss_fn(radius: int, border: str):
    """``loss_fn(model, batch)`` for :class:`~wsss_fast.training.Trainer`."""
    def loss_fn(model: AffinityNet, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        aff = model(batch["image"])
        label = batch["aff_label"]
        if aff.shape[-2:] != label.shape[-2:]:
            raise UsageError(f"the network's grid {tuple(aff.shape[-2:])} does not match the label "
                             f"grid {tuple(label.shape[-2:])}; the backbone's stride must divide the crop")
        return affinity_loss(aff, *pair_labels(label, radius, border))
    return loss_fn


def build_affinity_net(init: BackboneInit, *, radius: int, head_norm: str | None = None
                       ) -> tuple[AffinityNet, dict, str]:
    """The network to train (head_norm None: PSA's choice for the backbone,
    :func:`~wsss_fast.models.affinity_net.default_head_norm`), its backbone's
    {"backbone": name, "backbone_options": options} for the metadata, and a
    line saying how the backbone was initialised."""
    backbone, meta, how = initial_backbone(init)
    net = AffinityNet(backbone, radius=radius, head_norm=head_norm or default_head_norm(meta["backbone"]))
    return net, meta, how


def train_affinity(images: VOCSegmentation, label_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   init: BackboneInit, *, cfg: TrainConfig | None = None,
                   augment: AugmentSettings | None = None, radius: int = 5, head_norm: str | None = None,
                   border: str = "all", resume: bool = False, device: str = "cpu",
                   progress: bool = True) -> Path:
    """Trains AffinityNet on ``images`` with the labels in ``label_dir``;
    writes final.pt (metadata ``kind`` "affinity", ``backbone``,
    ``backbone_options``, ``num_classes``, ``class_names``, ``radius``,
    ``head_norm``, ``stride``, ``border``, ``init``, ``augment``),
    checkpoints and log.jsonl to ``out_dir`` and returns the final.pt path.
    ``border`` picks the labelled pairs
    (:func:`~wsss_fast.stages.affinity_labels.pair_labels`)."""
    cfg = cfg or psa_train_config()
    augment = augment or AugmentSettings()
    dataset = AffinityLabelSet(images, label_dir)
    torch.manual_seed(cfg.seed)  # the initialisation of the new layers
    model, backbone_meta, how = build_affinity_net(init, radius=radius, head_norm=head_norm)
    if progress:
        print(f"train-aff: {how}")
    metadata = {"kind": "affinity", **backbone_meta, "num_classes": images.num_classes,
                "class_names": list(images.class_names), "radius": radius, "head_norm": model.head_norm,
                "stride": model.stride, "border": border, "init": how,
                "augment": {"crop": augment.crop, "resize_long": augment.resize_long,
                            "jitter": augment.jitter, "flip": augment.flip}}
    trainer = Trainer(model, model.param_groups(), cfg, out_dir, affinity_loss_fn(radius, border),
                      metadata=metadata, device=device, progress=progress, desc="train-aff")
    train_set = EpochDataset(dataset, AffinityAugment(augment, model.stride), cfg.seed)
    return trainer.fit(train_set, collate_skip_none, resume=resume)
