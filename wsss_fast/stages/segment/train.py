"""Training a DeepLab network on label maps with the references' settings
(SPEC.md, "DeepLab"): SGD, momentum 0.9, lr 2.5e-4 (x10 for the head,
biases x2 / x20 without weight decay), poly 0.9, weight decay 5e-4, batch
10, 20k iterations; random rescale 0.5..1.5, flip, crop 321 (image padded
with the mean colour, labels with 255).

Reads the images of a split, a folder of label PNGs (pseudo labels) and
optional initial weights (ImageNet file or a classifier's final.pt); writes
the run folder (``final.pt``, ``checkpoint.pt``, ``log.jsonl``).
"""
from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import torch

from ...data.dataset import collate_skip_none
from ...data.labelled import LabelledImages
from ...errors import UsageError
from ...models.initial import BackboneInit, initial_backbone
from ...models.deeplab import DEFAULT_BACKBONES, HEADS, DeepLab, segmentation_loss
from ...training import EpochDataset, TrainConfig, Trainer
from ...transforms import TrainAugment

TRAIN_DEFAULTS = TrainConfig(epochs=1, batch_size=10, lr=2.5e-4, weight_decay=5e-4, momentum=0.9,
                             lr_mult=(1.0, 2.0, 10.0, 20.0), schedule="poly", poly_power=0.9)
ITERATIONS = 20_000
CROP = 321
SCALE = (0.5, 1.5)


def epochs_for(iterations: int, images: int, batch_size: int) -> int:
    """Whole epochs that make at least ``iterations`` steps of ``batch_size``
    (the trainer drops each epoch's last partial batch)."""
    steps = images // min(batch_size, images)
    return max(1, math.ceil(iterations / steps))


def _loss(model: DeepLab, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    return segmentation_loss(model(batch["image"]), batch["target"]), {}


def train_segmentation(voc_root: str | os.PathLike, split: str, labels_dir: str | os.PathLike,
                       out_dir: str | os.PathLike, *, head: str = "aspp", backbone: str | None = None,
                       backbone_options: dict | None = None, weights: str | os.PathLike | None = None,
                       classifier: str | os.PathLike | None = None,
                       cfg: TrainConfig = TRAIN_DEFAULTS, iterations: int | None = ITERATIONS,
                       crop: int = CROP, scale: tuple[float, float] = SCALE, resume: bool = False,
                       device: str | torch.device = "cpu", progress: bool = True) -> Path:
    """Trains DeepLab on the images of ``split`` with the label maps
    ``<labels_dir>/<name>.png`` (255 ignored); returns the path of final.pt.

    Args:
        head: "aspp" (DeepLab-v2) or "largefov".
        backbone, backbone_options: registry name and options (default: the
            head's, :data:`~wsss_fast.models.deeplab.DEFAULT_BACKBONES`).
        weights: backbone weights file (ImageNet or COCO-pretrained), given
            to the backbone's factory; None initialises it randomly.
        classifier: a train-cls final.pt (or its folder) whose backbone
            (architecture and, without ``weights``, weights) to start from.
        cfg: optimisation settings; ``cfg.epochs`` is used when
            ``iterations`` is None, else replaced by the whole epochs that
            make at least ``iterations`` steps.
        crop: square training crop in pixels; scale: (low, high) factor range
            of the random rescale.

    final.pt's metadata: ``kind`` "segmentation", ``backbone``,
    ``backbone_options``, ``head``, ``num_classes`` (background included),
    ``class_names``.
    """
    if head not in HEADS:
        raise UsageError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    if iterations is not None and iterations < 1:
        raise UsageError(f"iterations must be >= 1, got {iterations}")
    backbone_options = dict(backbone_options or {})
    if backbone is None and classifier is None:
        backbone, defaults = DEFAULT_BACKBONES[head]
        backbone_options = {**defaults, **backbone_options}
    data = LabelledImages(voc_root, split, labels_dir)
    if iterations is not None:
        cfg = replace(cfg, epochs=epochs_for(iterations, len(data), cfg.batch_size))
    cfg = replace(cfg, extra={**cfg.extra, "split": str(split), "labels": str(labels_dir),
                              "iterations": iterations, "crop": crop, "scale": list(scale),
                              "weights": None if weights is None else str(weights)})
    augment = TrainAugment(crop, scale=scale, flip=True, jitter=None, label_keys=("target",))
    torch.manual_seed(cfg.seed)  # the initialisation of new layers
    net, backbone_meta, how = initial_backbone(BackboneInit(backbone, backbone_options, weights, classifier))
    if progress:
        print(f"train-seg: {how}")
    model = DeepLab(net, data.num_classes, head)
    metadata = {"kind": "segmentation", **backbone_meta, "head": head, "num_classes": data.num_classes, "class_names": list(data.class_names)}
    trainer = Trainer(model, model.param_groups(), cfg, out_dir, _loss, metadata=metadata, device=device,
                      progress=progress, desc="train-seg")
    return trainer.fit(EpochDataset(data, augment, cfg.seed), collate_skip_none, resume=resume)
