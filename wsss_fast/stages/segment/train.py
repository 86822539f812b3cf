"""Training a DeepLab network on label maps with the references' settings
(SPEC.md, "DeepLab"; deeplab-pytorch main.py and configs/voc12.yaml): SGD,
momentum 0.9, lr 2.5e-4 (x10 for the head, biases x2 / x20 without weight
decay), poly 0.9, weight decay 5e-4, batch 10 (deeplab-pytorch: 5 x
ITER_SIZE 2), 20k iterations, flip, crop 321 (labels padded with 255).

wsss-fast's default recipe (:data:`DEFAULT_RECIPE`) and deeplab-pytorch's
(:data:`REFERENCE_RECIPE`) differ on purpose in: single-scale training with
the loss on upsampled logits (reference: MSC, the input at 1, 0.75 and 0.5
and their element-wise max, four losses on labels shrunk to each logit
grid), a random rescale uniform in 0.5..1.5 (reference: one of 0.5, 0.75,
1.0, 1.25, 1.5), the lr recomputed every step (reference: every 10), and
padding at a random place with the ImageNet mean (reference: bottom/right
with its Caffe mean). The reference also starts from the COCO-pretrained
Caffe ResNet-101 (``--backbone-option layout=deeplab --weights
deeplabv1_resnet101-coco.pth``).

Reads the images of a split, a folder of label PNGs (pseudo labels) and
optional initial weights (ImageNet or COCO file, or a classifier's final.pt);
writes the run folder (``final.pt``, ``checkpoint.pt``, ``log.jsonl``).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ...data.dataset import collate_skip_none
from ...data.labelled import LabelledImages
from ...errors import UsageError
from ...models.initial import BackboneInit, initial_backbone
from ...models.deeplab import ASPP_RATES, DEFAULT_BACKBONES, HEADS, LOSS_AT, DeepLab, segmentation_loss
from ...models.resnet101 import CAFFE_MEAN_BGR
from ...training import EpochDataset, TrainConfig, Trainer
from ...transforms import PAD_AT, TrainAugment

TRAIN_DEFAULTS = TrainConfig(epochs=1, batch_size=10, lr=2.5e-4, weight_decay=5e-4, momentum=0.9,
                             lr_mult=(1.0, 2.0, 10.0, 20.0), schedule="poly", poly_power=0.9)
ITERATIONS = 20_000
PAD_MEANS = {"imagenet": None, "caffe": tuple(reversed(CAFFE_MEAN_BGR))}  # padding colour, RGB 0..255


@dataclass(frozen=True)
class SegRecipe:
    """What train-seg does besides the optimiser (:class:`TrainConfig`).

    crop: square training crop (px). scale: (low, high) range of a uniform
        random rescale factor, or None; scale_choices: factors to draw from
        instead (int(side * s)), or None.
    msc: extra input scales of multi-scale training (deeplab-pytorch: 0.5,
        0.75; :func:`wsss_fast.models.deeplab.msc_logits`); empty: one scale.
    loss_at: "image" (upsampled logits) or "logits" (labels shrunk).
    pad_at: where a crop larger than the image is padded ("random", "end").
    pad_mean: padding colour of the image, "imagenet" or "caffe" (the mean
        of deeplab-pytorch's mean subtraction).
    masked_self_loss: add, for every output, the cross-entropy against the
        argmax of its own detached logits multiplied by the image's class
        labels with background (DRS's DeepLab-V2-PyTorch train.py; the
        multiplication, not a mask, is the code's: a negative logit of a
        present class can lose to the 0 of an absent one).
    """
    crop: int = 321
    scale: tuple[float, float] | None = (0.5, 1.5)
    scale_choices: tuple[float, ...] | None = None
    msc: tuple[float, ...] = ()
    loss_at: str = "image"
    pad_at: str = "random"
    pad_mean: str = "imagenet"
    masked_self_loss: bool = False

    def check(self) -> None:
        if self.crop < 1:
            raise UsageError(f"crop must be >= 1, got {self.crop}")
        if self.loss_at not in LOSS_AT or self.pad_at not in PAD_AT or self.pad_mean not in PAD_MEANS:
            raise UsageError(f"loss at {self.loss_at!r}, pad at {self.pad_at!r}, pad mean {self.pad_mean!r}: "
                             f"choose from {LOSS_AT}, {PAD_AT}, {tuple(PAD_MEANS)}")
        if any(not 0 < s for s in self.msc):
            raise UsageError(f"multi-scale factors must be positive, got {list(self.msc)}")

    def augment(self) -> TrainAugment:
        if self.scale_choices is not None:
            rescale = {"scale_choices": self.scale_choices}
        else:
            rescale = {"scale": self.scale} if self.scale is not None else {}
        return TrainAugment(self.crop, **rescale, flip=True, jitter=None, label_keys=("target",),
                            fill_rgb=PAD_MEANS[self.pad_mean], pad_at=self.pad_at)


DEFAULT_RECIPE = SegRecipe()
# deeplab-pytorch configs/voc12.yaml: IMAGE.SIZE.TRAIN 321, DATASET.SCALES;
# libs/models/__init__.py DeepLabV2_ResNet101_MSC: MSC scales [0.5, 0.75];
# main.py resize_labels; libs/datasets/base.py _augmentation (pad bottom/right with mean_bgr).
REFERENCE_RECIPE = SegRecipe(scale=None, scale_choices=(0.5, 0.75, 1.0, 1.25, 1.5), msc=(0.5, 0.75),
                             loss_at="logits", pad_at="end", pad_mean="caffe")
REFERENCE_POLY_EVERY = 10  # deeplab-pytorch configs/voc12.yaml SOLVER.LR_DECAY (PolynomialLR step_size)
REFERENCE_BACKBONE_OPTIONS = {"layout": "deeplab"}  # with --weights deeplabv1_resnet101-coco.pth


def epochs_for(iterations: int, images: int, batch_size: int) -> int:
    """Whole epochs that make at least ``iterations`` steps of ``batch_size``
    (the trainer drops each epoch's last partial batch)."""
    steps = images // min(batch_size, images)
    return max(1, math.ceil(iterations / steps))


def masked_self_loss(logits: torch.Tensor, image_labels: torch.Tensor) -> torch.Tensor:
    """DRS's DeepLab-V2-PyTorch train.py extra term: cross-entropy of
    ``logits`` (N, C+1, h, w) against argmax over classes of ``logits.detach()
    * [1, image_labels]`` ((N, C) multi-hot of the object classes)."""
    weights = torch.cat([torch.ones_like(image_labels[:, :1]), image_labels], 1).to(logits.dtype)
    pseudo = (logits.detach() * weights[:, :, None, None]).argmax(1)
    return F.cross_entropy(logits.float(), pseudo)


def segment_loss(recipe: SegRecipe):
    """``loss_fn(model, batch)``: the loss of :func:`segmentation_loss` at
    ``recipe.loss_at`` of every output (one, or the MSC outputs with
    ``recipe.msc``), plus :func:`masked_self_loss` of each with
    ``recipe.masked_self_loss`` (the batch then holds ``label``)."""
    def loss_fn(model: DeepLab, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        outputs = model(batch["image"], msc=recipe.msc) if recipe.msc else [model(batch["image"])]
        losses = [segmentation_loss(logits, batch["target"], recipe.loss_at) for logits in outputs]
        metrics = {"loss_max": losses[-1].item()} if recipe.msc else {}
        if recipe.masked_self_loss:
            extra = [masked_self_loss(logits, batch["label"]) for logits in outputs]
            metrics["loss_self"] = sum(extra).item()
            losses += extra
        return sum(losses), metrics
    return loss_fn


def train_segmentation(voc_root: str | os.PathLike, split: str, labels_dir: str | os.PathLike,
                       out_dir: str | os.PathLike, *, head: str = "aspp",
                       aspp_rates: Sequence[int] = ASPP_RATES, backbone: str | None = None,
                       backbone_options: dict | None = None, weights: str | os.PathLike | None = None,
                       classifier: str | os.PathLike | None = None,
                       cfg: TrainConfig = TRAIN_DEFAULTS, iterations: int | None = ITERATIONS,
                       recipe: SegRecipe = DEFAULT_RECIPE, resume: bool = False,
                       device: str | torch.device = "cpu", progress: bool = True) -> Path:
    """Trains DeepLab on the images of ``split`` with the label maps
    ``<labels_dir>/<name>.png`` (255 ignored); returns the path of final.pt.

    Args:
        head: "aspp" (DeepLab-v2), "largefov" or "decoder" (wsss-fast's, for
            light backbones: :class:`~wsss_fast.models.deeplab.DecoderHead`).
        aspp_rates: dilation rates of the ASPP ("aspp" and "decoder").
        backbone, backbone_options: registry name and options (default: the
            head's, :data:`~wsss_fast.models.deeplab.DEFAULT_BACKBONES`).
        weights: backbone weights file (ImageNet or COCO-pretrained), given
            to the backbone's factory; None initialises it randomly.
        classifier: a train-cls final.pt (or its folder) whose backbone
            (architecture and, without ``weights``, weights) to start from.
        cfg: optimisation settings; ``cfg.epochs`` is used when
            ``iterations`` is None; else training runs exactly
            ``iterations`` steps (the poly schedule spans them), in as many
            epochs as they need.
        recipe: augmentation, multi-scale inputs and loss (:class:`SegRecipe`).

    final.pt's metadata: ``kind`` "segmentation", ``backbone``,
    ``backbone_options``, ``head``, ``aspp_rates``, ``num_classes`` (background included),
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
    data = LabelledImages(voc_root, split, labels_dir, image_labels=recipe.masked_self_loss)
    recipe.check()
    if iterations is not None:
        cfg = replace(cfg, epochs=epochs_for(iterations, len(data), cfg.batch_size), max_steps=iterations)
    cfg = replace(cfg, extra={**cfg.extra, "split": str(split), "labels": str(labels_dir),
                              "iterations": iterations, "recipe": asdict(recipe),
                              "weights": None if weights is None else str(weights)})
    augment = recipe.augment()
    torch.manual_seed(cfg.seed)  # the initialisation of new layers
    net, backbone_meta, how = initial_backbone(BackboneInit(backbone, backbone_options, weights, classifier))
    if progress:
        print(f"train-seg: {how}")
    try:
        model = DeepLab(net, data.num_classes, head, aspp_rates)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    metadata = {"kind": "segmentation", **backbone_meta, "head": head, "aspp_rates": list(model.rates),
                "num_classes": data.num_classes, "class_names": list(data.class_names)}
    trainer = Trainer(model, model.param_groups(), cfg, out_dir, segment_loss(recipe), metadata=metadata, device=device,
                      progress=progress, desc="train-seg")
    return trainer.fit(EpochDataset(data, augment, cfg.seed), collate_skip_none, resume=resume)
