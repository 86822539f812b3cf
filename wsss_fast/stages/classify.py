"""Training of the CAM, DRS and SC-CAM classifiers (SPEC.md "CAM", "DRS",
"SC-CAM"): the references' defaults per method, the loss, and SC-CAM's
rounds of feature clustering and retraining.

Reads the images and image labels of a split and optional initial weights
(a backbone's ImageNet file, or the previous round for SC-CAM); writes the
run folder described below.

Outputs of a run in ``out_dir``:
    final.pt                 the trained classifier (wsss_fast.training
                             payload; metadata says how to rebuild it)
    checkpoint.pt, log.jsonl per-epoch checkpoint and the JSON-lines log
    learning.json            whether it learned (wsss_fast.learning: the last
                             epoch's loss against the class-prior loss; a
                             NotLearnedWarning when it did not)
SC-CAM with rounds writes one such folder per round (``round0`` ...
``round<R>``), each round r >= 1 with ``subcategories.npz`` (image names,
(N, C*K) sub-labels, (C, K) cluster sizes, (C,) inertia) and
``subcategories.json`` (the same statistics, readable), and copies the last
round's final.pt to ``out_dir/final.pt``.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import distributed
from ..data.dataset import ImagesWith, VOCSegmentation, collate_skip_none
from ..errors import UsageError
from ..inference import batches_by_size, image_sizes
from ..learning import check_learning
from ..models import Classifier, build_backbone
from ..storage import atomic_output, write_text_atomic
from ..training import FINAL, EpochDataset, Trainer, TrainConfig, load_final
from ..transforms import TrainAugment, normalize

LEARNING_FILE = "learning.json"

METHODS = ("cam", "drs", "sccam")
# the reference settings each method offers (the first is its default)
PRESETS = {"cam": ("psa", "irn"), "drs": ("drs",), "sccam": ("sccam",)}


@dataclass
class MethodPreset:
    """The settings of one method; every field has a CLI flag.

    head_bias, head_init: the class head (see :class:`wsss_fast.models.Classifier`).
    round_epochs: SC-CAM rounds 1, 2, ...: epochs each trains of its
        ``train.epochs``-epoch schedule (the reference takes the checkpoints
        of epochs 30, 40 and 50, counted from 0, of a 61-epoch poly
        schedule); empty: every round trains its whole schedule.
    augment: keyword arguments of :class:`wsss_fast.transforms.TrainAugment`.
    """
    backbone: str
    backbone_options: dict
    dropout: float
    subcategories: int
    sub_weight: float
    train: TrainConfig
    augment: dict = field(default_factory=dict)
    head_bias: bool = False
    head_init: str = "xavier"
    round_epochs: tuple[int, ...] = ()


def preset(method: str, variant: str | None = None) -> MethodPreset:
    """Defaults of ``method`` with the settings of reference ``variant``
    (None: the method's first in :data:`PRESETS`), a fresh copy, from the
    reference code:

    cam (psa): PSA's train_cls.py: ResNet-38, dropout 0.5, batch 16, 15 epochs, SGD
        lr 0.1 poly 0.9, wd 5e-4 (weights only), lr x1/x2/x10/x20 for
        pretrained weight/bias and new weight/bias, resize-long 256..512,
        crop 448, colour jitter (0.3, 0.3, 0.3, 0.1), last partial batch
        dropped. PSA's PolyOptimizer passes its weight decay positionally
        into SGD's *momentum* slot, so its effective momentum is 5e-4; we
        reproduce that (momentum=0.0005).
    cam (irn): IRN's train_cam (run_sample.py, step/train_cam.py,
        net/resnet50_cam.py): ResNet-50 at output stride 16 with IRN's
        FixedBatchNorm (statistics fixed, affine parameters trained) and no
        gradient to the stem, layer1 and layer2 (IRN detaches layer2's
        output), no dropout, batch 16, 5 epochs, SGD lr 0.1 poly 0.9 with lr
        x1 for the backbone and x10 for the head, weight decay 1e-4 on every
        parameter (biases too), resize-long 320..640, flip, crop 512, no colour
        jitter. IRN's PolyOptimizer has PSA's quirk: momentum = weight decay =
        1e-4. IRN initialises its head with PyTorch's default, ours with
        Xavier (as PSA).
    drs: DRS's VGG-16 D1 with learnable DRS at all 16 positions, batch 10
        (run.sh: 5 per GPU on 2 GPUs), 15 epochs, SGD nesterov momentum 0.9
        lr 1e-3, x0.1 from the 5th and the 10th epoch (the code's
        decay_points 5,10 count epochs from 1, so milestones (4, 9) here,
        which count from 0), wd 5e-4, crop 320, jitter (0.3, 0.3, 0.3, 0.1).
        Three settings differ from DRS's code on purpose (:func:`reference`
        restores them): the short side is resized to 384 keeping the aspect
        ratio (DRS squashes to 384 x 384); the class head has no bias and
        Xavier init (DRS: bias, He init), so that a CAM is the same linear
        map for every method; biases get no weight decay (DRS: all
        parameters); and the last partial batch is dropped (DRS keeps it).
    sccam: SC-CAM's code: ResNet-38 with a K=10 sub-category head, loss
        weight lambda 5, batch 16, SGD poly lr 0.01 (same optimiser quirk as
        PSA), resize-long 256..512, crop 224; each round on a 61-epoch poly
        schedule of which rounds 1, 2, 3 train 31, 41 and 51 epochs (the
        checkpoints ep30 / ep40 / ep50 of script.sh, taken before the
        schedule decays to zero).
    """
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    variant = variant or PRESETS[method][0]
    if variant not in PRESETS[method]:
        raise UsageError(f"method {method!r} has no preset {variant!r}; choose one of "
                         f"{', '.join(PRESETS[method])}")
    if variant == "irn":
        return MethodPreset("resnet50", {"train_bn_affine": True, "frozen_stages": 2}, 0.0, 0, 0.0,
                            TrainConfig(epochs=5, batch_size=16, lr=0.1, weight_decay=1e-4, momentum=1e-4,
                                        schedule="poly", lr_mult=(1.0, 1.0, 10.0, 10.0), bias_decay=True),
                            {"crop": 512, "resize_long": (320, 640), "jitter": None})
    if variant == "psa":
        return MethodPreset("resnet38", {}, 0.5, 0, 0.0,
                            TrainConfig(epochs=15, batch_size=16, lr=0.1, momentum=5e-4, schedule="poly"),
                            {"crop": 448, "resize_long": (256, 512)})
    if variant == "drs":
        return MethodPreset("vgg16_d1", {"drs": "learnable"}, 0.0, 0, 0.0,
                            TrainConfig(epochs=15, batch_size=10, lr=1e-3, momentum=0.9, nesterov=True,
                                        schedule="step", milestones=(4, 9)),
                            {"crop": 320, "resize_short": 384})
    return MethodPreset("resnet38", {}, 0.5, 10, 5.0,  # sccam
                        TrainConfig(epochs=61, batch_size=16, lr=0.01, momentum=5e-4, schedule="poly"),
                        {"crop": 224, "resize_long": (256, 512)}, round_epochs=(31, 41, 51))


def reference(method: str, variant: str | None = None) -> MethodPreset:
    """``method``'s preset (of reference ``variant``) with every setting of
    the reference code, also where wsss-fast's default differs on purpose
    (README, "Reproducing the references"). DRS (models/vgg.py,
    utils/LoadData.py, scripts/train_cls.py): squash to 384 x 384 then crop
    320, class head with bias and He init, weight decay on biases, last
    partial batch kept. The cam (psa, irn) and sccam presets already are their
    code's settings, but for IRN's head initialisation (PyTorch's default;
    not offered)."""
    p = preset(method, variant)
    if method == "drs":
        p = override(p, head_bias=True, head_init="he", **{"augment.squash": 384, "train.bias_decay": True,
                                                            "train.drop_last": False})
    return p


def classification_loss(sub_weight: float):
    """Multi-label soft-margin loss on the parent logits, plus ``sub_weight``
    times the same loss on the sub-category logits when the batch has
    ``sub_label`` (SC-CAM's Lp + lambda Ls)."""
    def loss_fn(model, batch):
        out = model(batch["image"])
        parent = F.multilabel_soft_margin_loss(out["logits"], batch["label"])
        if "sub_logits" not in out:
            return parent, {}
        sub = F.multilabel_soft_margin_loss(out["sub_logits"], batch["sub_label"])
        return parent + sub_weight * sub, {"loss_parent": parent.item(), "loss_sub": sub.item()}
    return loss_fn


class WithSubLabels(ImagesWith):
    """Adds ``sub_label`` ((C*K,) float32, from a name -> vector table) to
    the items of a dataset."""

    def __init__(self, dataset: VOCSegmentation, table: dict[str, np.ndarray]):
        missing = [n for n in dataset.names if n not in table]
        if missing:
            raise UsageError(f"sub-category labels lack {len(missing)} training images, e.g. {missing[0]!r}")
        super().__init__(dataset)
        self.table = table

    def extras(self, item: dict) -> dict:
        return {"sub_label": torch.from_numpy(self.table[item["name"]])}


def build_classifier(preset_: MethodPreset, num_classes: int, weights: str | None,
                     subcategories: int = 0) -> tuple[Classifier, object]:
    """The classifier of a method with its backbone weights loaded; returns
    it and the backbone's load report (None without weights)."""
    backbone = build_backbone(preset_.backbone, weights, **preset_.backbone_options)
    report = backbone.load_report
    return Classifier(backbone, num_classes, subcategories=subcategories, dropout=preset_.dropout,
                      head_bias=preset_.head_bias, head_init=preset_.head_init), report


def _metadata(method: str, p: MethodPreset, class_names, subcategories: int) -> dict:
    return {"kind": "classifier", "method": method, "backbone": p.backbone,
            "backbone_options": p.backbone_options, "num_classes": len(class_names) - 1,
            "subcategories": subcategories, "dropout": p.dropout, "head_bias": p.head_bias,
            "class_names": list(class_names)}


def train_round(method: str, p: MethodPreset, dataset: VOCSegmentation, out_dir: Path, *,
                weights: str | None, subcategories: int = 0, sub_table: dict | None = None,
                init_state: dict | None = None, resume: bool, device: str, progress: bool,
                desc: str = "train-cls") -> Path:
    """Trains one classifier; returns its final.pt."""
    torch.manual_seed(p.train.seed)  # the initialisation of new layers
    model, report = build_classifier(p, dataset.num_classes, weights, subcategories)
    if report is not None and progress:
        print(f"{desc}: backbone weights {weights}: {report.summary()}")
    if init_state is not None:
        missing, unexpected = model.load_state_dict(init_state, strict=False)
        if unexpected or any(not k.startswith("sub_head.") for k in missing):
            raise UsageError(f"the previous round's model does not fit: missing {missing}, unexpected {unexpected}")
    train_set = dataset if sub_table is None else WithSubLabels(dataset, sub_table)
    augment = TrainAugment(label_keys=(), **p.augment)
    trainer = Trainer(model, model.param_groups(), p.train, out_dir, classification_loss(p.sub_weight),
                      metadata=_metadata(method, p, dataset.class_names, subcategories), device=device,
                      progress=progress, desc=desc)
    final = trainer.fit(EpochDataset(train_set, augment, p.train.seed), collate_skip_none, resume=resume)
    if distributed.is_main():
        labels = np.stack([dataset.labels[name] for name in dataset.names])
        check_learning(out_dir / "log.jsonl", labels, what=desc, out=out_dir / LEARNING_FILE)
    return final


@torch.no_grad()
def pooled_features(model: Classifier, dataset: VOCSegmentation, *, batch_size: int, device: str,
                    num_workers: int, progress: bool) -> torch.Tensor:
    """(N, D) globally average-pooled final features of every image of the
    dataset at scale 1.0, no flip, eval mode (SC-CAM's clustering input),
    in dataset order; images of one size go through the model together."""
    model.eval().to(device)
    sizes = image_sizes([dataset.voc.image_path(n) for n in dataset.names])
    batches = batches_by_size(sizes, batch_size)
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate_skip_none)
    features = torch.zeros(len(dataset), model.backbone.out_channels, dtype=torch.float64)
    for indices, batch in zip(batches, tqdm(loader, desc="features", unit="batch", disable=not progress)):
        if batch is None:
            continue
        kept = [i for i in indices if dataset.names[i] in batch["name"]]  # corrupt images skipped
        out = model(normalize(batch["image"].to(device)))
        features[kept] = out["features"].double().cpu()
    return features


def cluster_round(model_path: Path, dataset: VOCSegmentation, out_dir: Path, *, k: int, n_init: int,
                  seed: int, batch_size: int, device: str, num_workers: int, progress: bool) -> dict[str, np.ndarray]:
    """SC-CAM's clustering step: features of the previous round's model, one
    K-means per class (one ops.kmeans call), sub-labels saved in out_dir.
    Reuses out_dir/subcategories.npz when it exists (resume). Under
    torchrun rank 0 clusters and the other ranks read its table."""
    path = out_dir / "subcategories.npz"
    if distributed.is_main() and not path.is_file():
        _cluster(model_path, dataset, out_dir, path, k=k, n_init=n_init, seed=seed, batch_size=batch_size,
                 device=device, num_workers=num_workers, progress=progress)
    distributed.barrier()
    with np.load(path) as z:
        return dict(zip(z["names"].tolist(), z["labels"]))


def _cluster(model_path: Path, dataset: VOCSegmentation, out_dir: Path, path: Path, *, k: int, n_init: int,
             seed: int, batch_size: int, device: str, num_workers: int, progress: bool) -> None:
    """Writes ``path`` (names, sub-labels (N, C*K) float32, cluster sizes,
    inertia) and subcategories.json (the same statistics per class)."""
    from ..models.checkpoints import load_classifier
    from .sccam import subcategory_labels

    model = load_classifier(model_path)
    features = pooled_features(model, dataset, batch_size=batch_size, device=device,
                               num_workers=num_workers, progress=progress)
    labels = torch.from_numpy(np.stack([dataset.labels[n] for n in dataset.names]))
    result = subcategory_labels(features.to(device), labels.to(device), k, n_init=n_init, seed=seed)
    sub = result.labels.cpu().numpy().astype(np.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, names=np.array(dataset.names), labels=sub,
                            cluster_sizes=result.cluster_sizes.cpu().numpy(),
                            inertia=result.inertia.cpu().numpy())
    stats = {name: {"cluster_sizes": result.cluster_sizes[c].tolist(), "inertia": float(result.inertia[c])}
             for c, name in enumerate(dataset.class_names[1:])}
    write_text_atomic(out_dir / "subcategories.json", json.dumps(stats, indent=1) + "\n")


ROUND0_PRESETS = ("cam", "sccam")


def round0_preset(p: MethodPreset, which: str) -> MethodPreset:
    """The settings of SC-CAM's round 0 (a plain CAM classifier): "cam" is
    PSA's train_cls (the ``cam`` preset; the reference's round 0 is PSA's
    released res38_cls.pth) on ``p``'s backbone, with ``p``'s seed and
    loader workers; "sccam" is ``p`` itself without the sub-category head
    and trained over its whole schedule."""
    if which not in ROUND0_PRESETS:
        raise UsageError(f"--round0-preset must be one of {', '.join(ROUND0_PRESETS)}, got {which!r}")
    if which == "sccam":
        return dataclasses.replace(p, subcategories=0, round_epochs=())
    cam = preset("cam")
    return override(cam, backbone=p.backbone, **{"train.seed": p.train.seed,
                                                 "train.num_workers": p.train.num_workers},
                    backbone_options=p.backbone_options)


def import_round0(path: str | Path, p: MethodPreset, class_names, out_dir: Path) -> Path:
    """The final.pt SC-CAM's rounds start from, given as ``path``: a
    wsss-fast classifier (run folder or final.pt) is used as it is; any
    other file is read as a PSA-layout classifier state dict (PSA's
    res38_cls.pth: the ResNet-38 keys and ``fc8.weight``), checked against
    a classifier on ``p``'s backbone, and written as ``out_dir/final.pt``."""
    from ..models.checkpoints import resolve_final
    from ..models.convert import psa_classifier_state
    from ..models.weights import load_weights, read_weights_file, state_dict_of

    path = resolve_final(path)
    obj = read_weights_file(path)
    if isinstance(obj, dict) and "metadata" in obj:  # a wsss-fast final.pt
        return path
    state = psa_classifier_state(state_dict_of(obj, path))
    base = dataclasses.replace(p, subcategories=0, head_bias=False)
    model, _ = build_classifier(base, len(class_names) - 1, None)
    load_weights(model, state, what=f"{p.backbone} classifier (--round0 {path})")
    final = out_dir / FINAL
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"model": model.state_dict(), "config": {"imported_from": str(path)},
               "metadata": _metadata("cam", base, class_names, 0)}
    with atomic_output(final) as tmp:
        torch.save(payload, tmp)
    return final


def train_classifier(method: str, p: MethodPreset, dataset: VOCSegmentation, out_dir: str | Path, *,
                     weights: str | None, rounds: int = 0, init_from: str = "imagenet", n_init: int = 10,
                     round0: str | Path | None = None, round0_settings: str = "cam",
                     resume: bool = False, device: str = "cpu", progress: bool = True,
                     feature_batch: int = 8) -> Path:
    """Trains ``method``'s classifier into out_dir (see the module
    docstring). With ``rounds`` > 0 (SC-CAM): round 0 is a plain CAM
    classifier, ``round0`` (imported by :func:`import_round0`) or trained
    with :func:`round0_preset` (``round0_settings``); each round r >= 1
    clusters the previous round's features and trains with the sub-category
    head, starting from ``weights`` (init_from "imagenet", as the reference)
    or from the previous round's model ("previous"), for
    ``p.round_epochs[r - 1]`` epochs of its ``p.train.epochs``-epoch
    schedule (all of them when ``p.round_epochs`` is empty). Returns
    out_dir/final.pt."""
    out_dir = Path(out_dir)
    if rounds == 0:
        if round0 is not None:
            raise UsageError("--round0 is for SC-CAM's rounds (--rounds >= 1)")
        return train_round(method, p, dataset, out_dir, weights=weights, resume=resume, device=device,
                           progress=progress)
    if p.subcategories < 1:
        raise UsageError(f"--rounds needs sub-categories (--subcategories K >= 1), got {p.subcategories}")
    if init_from not in ("imagenet", "previous"):
        raise UsageError(f"--init-from must be 'imagenet' or 'previous', got {init_from!r}")
    if p.round_epochs and len(p.round_epochs) < rounds:
        raise UsageError(f"--round-epochs gives {len(p.round_epochs)} rounds' epochs "
                         f"({' '.join(map(str, p.round_epochs))}) for {rounds} rounds")
    if round0 is not None:
        previous = import_round0(round0, p, dataset.class_names, out_dir / "round0")
    else:
        previous = train_round(method if round0_settings == "sccam" else "cam",
                               round0_preset(p, round0_settings), dataset, out_dir / "round0",
                               weights=weights, resume=resume, device=device, progress=progress,
                               desc="train-cls round 0")
    for r in range(1, rounds + 1):
        round_dir = out_dir / f"round{r}"
        table = cluster_round(previous, dataset, round_dir, k=p.subcategories, n_init=n_init,
                              seed=p.train.seed + r, batch_size=feature_batch, device=device,
                              num_workers=p.train.num_workers, progress=progress)
        init_state = load_final(previous)["model"] if init_from == "previous" else None
        p_round = p
        if p.round_epochs:
            p_round = dataclasses.replace(p, train=dataclasses.replace(p.train, stop_epoch=p.round_epochs[r - 1]))
        previous = train_round(method, p_round, dataset, round_dir, weights=weights,
                               subcategories=p.subcategories, sub_table=table, init_state=init_state,
                               resume=resume, device=device, progress=progress, desc=f"train-cls round {r}")
    final = out_dir / FINAL
    with atomic_output(final) as tmp:
        shutil.copyfile(previous, tmp)
    return final


RESIZES = ("resize_long", "resize_short", "squash")  # rescaling options of which one applies


def override(p: MethodPreset, **changes) -> MethodPreset:
    """A copy of ``p`` with the given top-level, ``train.*`` (TrainConfig
    field names) and ``augment.*`` values replaced; None values are ignored.
    Setting one of the rescaling options (resize_long, resize_short,
    squash) removes the others."""
    top = {k: v for k, v in changes.items() if v is not None and k in
           {f.name for f in dataclasses.fields(MethodPreset)} - {"train", "augment"}}
    train = {k[6:]: v for k, v in changes.items() if v is not None and k.startswith("train.")}
    augment = {k[8:]: v for k, v in changes.items() if v is not None and k.startswith("augment.")}
    unknown = [k for k in changes if changes[k] is not None and k not in top
               and not k.startswith(("train.", "augment."))]
    if unknown:
        raise UsageError(f"unknown classifier setting(s): {', '.join(unknown)}")
    bad = [k for k in train if k not in {f.name for f in dataclasses.fields(TrainConfig)}]
    if bad:
        raise UsageError(f"unknown training setting(s): {', '.join(bad)}")
    new_augment = {**p.augment, **augment}
    for key in RESIZES:
        if key in augment:
            for other in RESIZES:
                if other != key:
                    new_augment.pop(other, None)
    return dataclasses.replace(p, **top, train=dataclasses.replace(p.train, **train), augment=new_augment)
