"""DRS refinement learning (SPEC.md, "DRS"): a plain network regresses the
localisation maps of the DRS classifier with an MSE loss.

Reads the DRS classifier (final.pt), its CAM files of the split
(``make-cam``, DRS preset) and the images; writes the refinement network's
run folder (``final.pt`` with metadata kind "refine", readable by
``make-cam``; ``checkpoint.pt``, ``log.jsonl``).

Following DRS's train_refine.py and LoadData_refine.py:

- targets: the classifier's maps (``make-cam`` of the DRS classifier, DRS
  preset), each pixel keeping only the map(s) equal to its per-pixel maximum
  over the classes (max-masked), zero for classes absent from the image;
- inputs: the image squashed to ``size`` x ``size`` (320) with its maps,
  horizontal flip, colour jitter (0.3, 0.3, 0.3, 0.1); the mask is applied
  after the resize, as the reference applies it after its transforms;
- network: the classifier's backbone without DRS (plain ReLUs) and a new
  1x1 head (:class:`wsss_fast.models.RefineNet`); its maps are upsampled to
  the input (bilinear, align_corners=True) and compared over all classes;
- optimiser: Adam, lr 1e-4, no weight decay, one learning rate for every
  parameter; batch 10 (run.sh: 5 per GPU on 2 GPUs); lr x0.1 from the 5th
  and the 10th epoch (paper: 15 epochs; code: 30 epochs, decays from the
  10th and 20th: ``schedule="code"``).

Differences: the reference stores the maps as uint8 at 320 x 320 (computed
on the squashed image) while ours come at image resolution (float16 by
default) and are resized here; the reference keeps the epoch with the best
mIoU on ground truth, wsss-fast the last epoch. On purpose, and restored by
:data:`REFERENCE`: the paper's schedule (the code's is twice as long), the
new convolutions' He initialisation of the backbone (models/vgg_refine.py
draws them from N(0, 0.01)), and the last partial batch dropped (DRS's
DataLoader keeps it).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.dataset import ImagesWith
from ..errors import DataError, UsageError
from ..storage import load_scores
from ..transforms import colour_jitter, normalize, resize

INITS = ("imagenet", "classifier")
SCHEDULES = {"paper": (15, (5, 10)), "code": (30, (10, 20))}  # epochs, 1-based epochs where lr x0.1 starts
# DRS's code: run.sh (--epoch 30 --decay_points 10,20), models/vgg_refine.py
# (_initialize_weights: N(0, 0.01)), utils/LoadData_refine.py (no drop_last).
REFERENCE = {"schedule": "code", "new_layer_std": 0.01, "drop_last": False}
DRS_ONLY_OPTIONS = ("delta", "drs_layers", "drs_blocks")  # backbone options that need drs != "none"


def plain_backbone_options(options: dict) -> dict:
    """The classifier's backbone options with DRS switched off (``drs="none"``
    where the backbone has a ``drs`` option, without the options that only
    apply to DRS: delta, drs_layers, drs_blocks)."""
    options = {k: v for k, v in options.items() if k not in DRS_ONLY_OPTIONS}
    if "drs" in options:
        options["drs"] = "none"
    return options


def max_mask(maps: torch.Tensor) -> torch.Tensor:
    """(C, H, W) maps with every value that is not its pixel's maximum over
    the classes set to 0 (ties keep all maxima)."""
    if maps.shape[0] == 0:
        return maps
    return maps * (maps == maps.amax(dim=0, keepdim=True))


class CamTargets(ImagesWith):
    """Items of ``dataset`` (a VOCSegmentation) with the stored CAMs of each
    image: ``cam_keys`` int64 (K,) and ``cam`` float32 (K, H, W).

    Raises DataError naming the missing CAM files when the dataset is built,
    and one naming the file when a CAM's size differs from its image's."""

    def __init__(self, dataset, cam_dir: str | os.PathLike):
        super().__init__(dataset)
        self.cam_dir = Path(cam_dir)
        if not self.cam_dir.is_dir():
            raise DataError(f"CAM folder {self.cam_dir} is not a directory")
        present = {p.name for p in os.scandir(self.cam_dir)}
        missing = [n for n in dataset.names if f"{n}.npz" not in present]
        if missing:
            shown = ", ".join(f"'{n}.npz'" for n in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise DataError(f"missing CAMs {shown}{more} in {self.cam_dir} (run make-cam first)")

    def extras(self, item: dict) -> dict:
        path = self.cam_dir / f"{item['name']}.npz"
        scores = load_scores(path)
        if scores.data.shape[1:] != tuple(item["image"].shape[1:]):
            raise DataError(f"CAMs '{path.name}' in {path.parent} are {scores.data.shape[2]}x"
                            f"{scores.data.shape[1]} but the image is {item['image'].shape[2]}x"
                            f"{item['image'].shape[1]}")
        return {"cam_keys": torch.from_numpy(scores.keys), "cam": torch.from_numpy(scores.data)}


class RefineAugment:
    """The refinement transform (module docstring), called as
    ``augment(item, rng)`` on a :class:`CamTargets` item; returns ``name``,
    ``image`` float32 (3, size, size) normalised and ``target`` float32
    (num_classes, size, size) max-masked."""

    def __init__(self, size: int, num_classes: int, *, flip: bool = True,
                 jitter: tuple[float, float, float, float] | None = (0.3, 0.3, 0.3, 0.1)):
        if size < 1:
            raise UsageError(f"refinement input size must be >= 1, got {size}")
        self.size = size
        self.num_classes = num_classes
        self.flip = flip
        self.jitter = jitter

    def __call__(self, item: dict, rng: np.random.Generator) -> dict:
        shape = (self.size, self.size)
        image = resize(item["image"].float(), shape)
        target = torch.zeros(self.num_classes, *shape)
        keys = item["cam_keys"]
        if len(keys):
            target[keys - 1] = resize(item["cam"], shape)
        if self.flip and rng.random() < 0.5:
            image, target = image.flip(-1), target.flip(-1)
        if self.jitter is not None:
            image = colour_jitter(image, rng, *self.jitter)
        return {"name": item["name"], "image": normalize(image), "target": max_mask(target)}


def refine_loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """MSE between the network's maps, upsampled to the target size
    (bilinear, align_corners=True), and the (N, C, S, S) targets."""
    target = batch["target"]
    maps = F.interpolate(model(batch["image"]), size=target.shape[-2:], mode="bilinear", align_corners=True)
    return F.mse_loss(maps.float(), target), {}


def build_refine_net(classifier_path: str | os.PathLike, init: str, weights: str | os.PathLike | None,
                     new_layer_std: float | None = None):
    """(RefineNet, metadata) for the classifier of ``classifier_path``:
    its backbone without DRS, initialised from ``weights`` (``init``
    "imagenet", the reference) or from the classifier's backbone
    ("classifier"; its DRS controllers are left out). With ``init``
    "imagenet" and ``new_layer_std``, the backbone's new convolution weights
    (VGG-16 D1's extra convolutions) are redrawn from N(0, std^2)."""
    from ..models import RefineNet, build_backbone, load_weights
    from ..models.checkpoints import read_checkpoint, resolve_final

    if init not in INITS:
        raise UsageError(f"--init must be one of {INITS}, got {init!r}")
    state, meta = read_checkpoint(classifier_path, ("classifier",))
    name, options = meta["backbone"], plain_backbone_options(meta["backbone_options"])
    if init == "imagenet":
        if weights is None:
            raise UsageError(f"--init imagenet needs --weights FILE (ImageNet weights of {name}); "
                             "or use --init classifier")
        backbone = build_backbone(name, weights, **options)
        if new_layer_std is not None:
            for param_name, param in backbone.named_parameters():
                if backbone.is_new(param_name) and param.dim() == 4:
                    nn.init.normal_(param, 0.0, new_layer_std)
    else:
        if new_layer_std is not None:
            raise UsageError("--new-layer-std is for --init imagenet; --init classifier takes the classifier's layers")
        if weights is not None:
            raise UsageError("--weights is for --init imagenet; --init classifier takes the classifier's")
        backbone = build_backbone(name, None, **options)
        own = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        report = load_weights(backbone, own, what=f"{name} backbone")
        print(f"refine: backbone from {resolve_final(classifier_path)}: {report.summary()}")
    metadata = {"kind": "refine", "backbone": name, "backbone_options": options,
                "num_classes": int(meta["num_classes"]), "class_names": meta.get("class_names"),
                "method": "drs", "init": init, "classifier": str(resolve_final(classifier_path))}
    return RefineNet(backbone, int(meta["num_classes"])), metadata


def train_refine(classifier_path: str | os.PathLike, voc_root: str | os.PathLike, split: str,
                 cam_dir: str | os.PathLike, out_dir: str | os.PathLike, *, init: str = "imagenet",
                 weights: str | os.PathLike | None = None, epochs: int = 15,
                 decay_at: Sequence[int] = (5, 10),
                 lr: float = 1e-4, batch_size: int = 10, size: int = 320, num_workers: int = 2,
                 new_layer_std: float | None = None, drop_last: bool = True,
                 device: str | torch.device = "cpu", seed: int = 0, amp: bool = True, resume: bool = False,
                 progress: bool = True) -> Path:
    """Trains the refinement network; returns the path of its final.pt
    (metadata ``kind`` "refine", readable by make-cam).

    Args:
        classifier_path: the DRS classifier's final.pt (or its folder).
        cam_dir: its CAMs of ``split`` (make-cam, DRS preset).
        decay_at: 1-based epochs from which the lr is multiplied by 0.1 again.
        new_layer_std: see :func:`build_refine_net`.
        drop_last: drop each epoch's last partial batch.
        Other arguments: see the module docstring and :class:`wsss_fast.training.TrainConfig`.
    """
    from torch.utils.data import default_collate

    from ..data import VOCSegmentation
    from ..training import EpochDataset, TrainConfig, Trainer

    if any(d < 1 for d in decay_at):
        raise UsageError(f"decay epochs are 1-based, got {list(decay_at)}")
    with torch.random.fork_rng(devices=[]):  # the new head's initialisation follows the seed
        torch.manual_seed(seed)
        model, metadata = build_refine_net(classifier_path, init, weights, new_layer_std)
    images = VOCSegmentation(voc_root, split, labels=False)
    if images.num_classes != metadata["num_classes"]:
        raise UsageError(f"the classifier has {metadata['num_classes']} classes but {images.voc.root} "
                         f"has {images.num_classes}")
    metadata["cams"] = str(cam_dir)
    dataset = EpochDataset(CamTargets(images, cam_dir), RefineAugment(size, metadata["num_classes"]), seed)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=0.0, optimizer="adam",
                      lr_mult=(1.0, 1.0, 1.0, 1.0), schedule="step",
                      milestones=tuple(d - 1 for d in decay_at), seed=seed, num_workers=num_workers, amp=amp,
                      drop_last=drop_last,
                      extra={"stage": "train-refine", "decay_at": list(decay_at), "size": size,
                             "split": split})
    trainer = Trainer(model, model.param_groups(), cfg, out_dir, refine_loss, metadata=metadata,
                      device=device, progress=progress, desc="refine")
    return trainer.fit(dataset, default_collate, resume=resume)
