"""Training IRN's boundary network (``wsss-fast train-irn``; SPEC.md,
"AffinityNet and random walk", IRN variant; jiwoon-ahn/irn step/train_irn.py,
net/resnet50_irn.py, voc12/dataloader.py).

Reads the images of a split, the inter-pixel relation labels of
``make-ir-labels`` (``<labels>/<name>.png``) and the backbone to start from
(a weights file, IRN: ImageNet ResNet-50; or a train-cls final.pt); writes
the training run folder (``final.pt``, ``checkpoint.pt``, ``log.jsonl``, see
:mod:`wsss_fast.training`).

Each training item (IRN's VOC12AffinityDataset): the image and its label map
rescaled by a random factor in [0.5, 1.5] (bilinear / nearest; IRN: PIL
bicubic / nearest), flipped, cropped to a random 512 square (image padding 0
after normalisation, label padding 255), no colour jitter; the label map is
then reduced to the stride-4 grid by nearest sampling (the pixel at 4i + 2,
PIL's nearest rule for a 1/4 rescale). The pairs are IRN's: radius 10 on that
grid (step/train_irn.py builds ``PathIndex(radius=10)``; the walk uses 5),
sources cropped as IRN's path index crops them (``pair_labels`` with border
"psa": at least radius - 1 from the left, right and bottom borders). Loss
(the affinity terms of IRN's AffinityDisplacementLoss): with a = 1 - max
boundary along each pair's path (:func:`wsss_fast.boundary.boundary_affinity`
of the sigmoid of the logits), bg/4 + fg/4 + neg/2 of -log(a + 1e-5) over
background and foreground positive pairs and -log(1 + 1e-5 - a) over negative
pairs, each averaged over its pairs: IRN's (pos_bg/2 + pos_fg/2 + neg)/2,
which is AffinityNet's :func:`~wsss_fast.models.affinity_net.affinity_loss`.
The displacement branch and its loss terms are left out (instance
segmentation is not offered; see :mod:`wsss_fast.models.irn`).

IRN's defaults (run_sample.py, step/train_irn.py): batch 32, 3 epochs, SGD
lr 0.1 with poly 0.9 decay per step on the boundary layers (IRN's x10 group is
the displacement branch), weight decay 1e-4 on every parameter, biases
included; the backbone is frozen. IRN's PolyOptimizer, like PSA's, hands its
weight decay to SGD's momentum slot, so its momentum is 1e-4 (reproduced).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .affinity_labels import pair_labels
from ..boundary import boundary_affinity
from ..data.dataset import collate_skip_none
from ..data.labelled import LabelledImages
from ..data.voc import VOCRoot
from ..errors import UsageError
from ..models.affinity_net import affinity_loss
from ..models.initial import BackboneInit, initial_backbone
from ..models.irn import BoundaryNet
from ..training import EpochDataset, Trainer, TrainConfig
from ..transforms import TrainAugment

RADIUS = 10  # IRN's training radius (step/train_irn.py)


def irn_train_config(**changes) -> TrainConfig:
    """IRN's train_irn optimisation settings (module docstring), with changes."""
    settings = dict(epochs=3, batch_size=32, lr=0.1, weight_decay=1e-4, momentum=1e-4,
                    schedule="poly", poly_power=0.9, lr_mult=(1.0, 1.0, 1.0, 1.0), bias_decay=True)
    settings.update(changes)
    return TrainConfig(**settings)


@dataclass
class IRNAugmentSettings:
    """IRN's train_irn augmentation: random rescale in ``scale``, flip, random
    ``crop`` square, no colour jitter unless ``jitter`` is given."""
    crop: int = 512
    scale: tuple[float, float] = (0.5, 1.5)
    flip: bool = True
    jitter: tuple[float, float, float, float] | None = None


def reduce_labels(label: torch.Tensor, stride: int) -> torch.Tensor:
    """(..., H, W) label maps -> (..., ceil(H / stride), ceil(W / stride)) by
    nearest sampling at stride * i + stride // 2 (clamped to the map): PIL's
    nearest-neighbour rule for a 1 / stride rescale, as IRN reduces its labels."""
    h, w = label.shape[-2:]
    rows = (torch.arange(-(-h // stride)) * stride + stride // 2).clamp(max=h - 1)
    cols = (torch.arange(-(-w // stride)) * stride + stride // 2).clamp(max=w - 1)
    return label[..., rows[:, None], cols[None, :]]


class BoundaryAugment:
    """``augment(item, rng)`` for :class:`~wsss_fast.data.labelled.LabelledImages`
    items: the image and its IR label map through :class:`TrainAugment`, the
    label reduced to the network's stride. Returns ``name``, ``image``
    float32 (3, crop, crop) and ``ir_label`` int64 (ceil(crop / 4),
    ceil(crop / 4))."""

    def __init__(self, settings: IRNAugmentSettings, stride: int = BoundaryNet.stride):
        self.transform = TrainAugment(settings.crop, scale=settings.scale, flip=settings.flip,
                                      jitter=settings.jitter, label_keys=("target",))
        self.stride = stride

    def __call__(self, item: dict, rng: np.random.Generator) -> dict:
        item = self.transform(item, rng)
        return {"name": item["name"], "image": item["image"],
                "ir_label": reduce_labels(item["target"], self.stride)}


def boundary_loss_fn(radius: int, border: str = "psa"):
    """``loss_fn(model, batch)`` for :class:`~wsss_fast.training.Trainer`: the
    affinity loss of the module docstring (``border`` "psa": IRN's cropped
    sources; "all": every pair inside the crop)."""
    def loss_fn(model: BoundaryNet, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        boundary = torch.sigmoid(model(batch["image"]).float())
        label = batch["ir_label"]
        if boundary.shape[-2:] != label.shape[-2:]:
            raise UsageError(f"the network's grid {tuple(boundary.shape[-2:])} does not match the label "
                             f"grid {tuple(label.shape[-2:])}")
        return affinity_loss(boundary_affinity(boundary, radius), *pair_labels(label, radius, border))
    return loss_fn


def train_irn(voc: VOCRoot, split: str, label_dir: str | os.PathLike, out_dir: str | os.PathLike,
              init: BackboneInit, *, cfg: TrainConfig | None = None,
              augment: IRNAugmentSettings | None = None, radius: int = RADIUS, border: str = "psa",
              resume: bool = False, device: str = "cpu", progress: bool = True) -> Path:
    """Trains IRN's boundary branch on the images of ``split`` with the IR
    labels in ``label_dir``; writes final.pt (metadata ``kind`` "irn", ``backbone``,
    ``backbone_options``, ``num_classes``, ``class_names``, ``radius``,
    ``border``, ``crop``, ``stride``, ``init``, ``augment``), checkpoints and
    log.jsonl to ``out_dir`` and returns the final.pt path. ``border`` picks
    the labelled pairs (:func:`~wsss_fast.stages.affinity_labels.pair_labels`;
    IRN: "psa", its path index crops the sources the same way)."""
    cfg = cfg or irn_train_config()
    augment = augment or IRNAugmentSettings()
    cells = -(-augment.crop // BoundaryNet.stride)
    if border == "psa" and cells < 2 * radius - 1:
        raise UsageError(f"crop {augment.crop} gives a {cells} x {cells} grid at stride {BoundaryNet.stride}, "
                         f"too small for pairs of radius {radius} with border 'psa' (sources at least "
                         f"{radius - 1} cells from the sides): use a crop of at least "
                         f"{BoundaryNet.stride * (2 * radius - 1)}, a smaller radius or border 'all'")
    dataset = LabelledImages(voc, split, label_dir)
    torch.manual_seed(cfg.seed)  # the initialisation of the new layers
    backbone, backbone_meta, how = initial_backbone(init)
    model = BoundaryNet(backbone)
    if progress:
        print(f"train-irn: {how}")
    metadata = {"kind": "irn", **backbone_meta, "num_classes": voc.num_classes,
                "class_names": list(voc.class_names), "radius": radius, "border": border, "crop": augment.crop,
                "stride": model.stride, "init": how,
                "augment": {"crop": augment.crop, "scale": augment.scale, "flip": augment.flip,
                            "jitter": augment.jitter}}
    trainer = Trainer(model, model.param_groups(), cfg, out_dir, boundary_loss_fn(radius, border),
                      metadata=metadata, device=device, progress=progress, desc="train-irn")
    train_set = EpochDataset(dataset, BoundaryAugment(augment, model.stride), cfg.seed)
    return trainer.fit(train_set, collate_skip_none, resume=resume)
