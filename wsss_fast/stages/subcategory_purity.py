"""How well SC-CAM's clusters find hidden sub-categories, per round.

Reads an SC-CAM run folder of ``train-cls`` (``round<r>/subcategories.npz``
for r >= 1: the clusters round r trained on, made from round r - 1's
features; ``round<r>/final.pt``) and a dataset's hidden sub-types
(``subcategories.json`` of the demo data, :mod:`wsss_fast.data.demo`);
:func:`purity_per_round` writes nothing (the command writes the JSON it
returns), :func:`cam_miou_per_round` writes each round's CAMs of the images
it scores to ``<out>/round<r>/`` and their list to ``<out>/names.txt``.

For each class with two or more sub-types, the images whose items of that
class are all of one sub-type are scored with
:func:`wsss_fast.eval.cluster_purity` (purity, its floor ``majority`` and
NMI); images mixing sub-types of the class are left out (their cluster has
no single right answer).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from ..data.voc import read_class_names
from ..errors import DataError, UsageError
from ..eval import cluster_purity
from ..storage import write_text_atomic

SUBTYPE_FILE = "subcategories.json"


def read_subtypes(voc_root: str | os.PathLike) -> tuple[dict[str, list[str]], dict[str, dict[str, list[str]]]]:
    """(sub-types per class, per image the sub-type of each item per class)
    from ``voc_root/subcategories.json``."""
    path = Path(voc_root) / SUBTYPE_FILE
    if not path.is_file():
        raise DataError(f"{path} does not exist: sub-category purity needs the hidden sub-types, "
                        "which only the demo data (wsss-fast make-demo-data) records")
    try:
        payload = json.loads(path.read_text())
        return payload["subtypes"], payload["images"]
    except (ValueError, KeyError) as exc:
        raise DataError(f"{path} is not a sub-type file ({exc})") from None


def round_dirs(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(r, folder) of every ``round<r>`` with a subcategories.npz, r ascending."""
    found = []
    for path in Path(run_dir).glob("round*/subcategories.npz"):
        match = re.fullmatch(r"round(\d+)", path.parent.name)
        if match:
            found.append((int(match.group(1)), path.parent))
    if not found:
        raise UsageError(f"{run_dir} holds no SC-CAM round with sub-categories (round<r>/subcategories.npz); "
                         "train it with train-cls --method sccam --rounds R")
    return sorted(found)


def round_purity(npz_path: str | os.PathLike, class_names: list[str], subtypes: dict[str, list[str]],
                 images: dict[str, dict[str, list[str]]]) -> dict[str, dict]:
    """Per class with sub-types: :func:`cluster_purity` of the round's
    clusters (``npz_path``: names (N,), labels (N, C * K)) against the
    images' single sub-type."""
    with np.load(npz_path, allow_pickle=False) as z:
        names, labels = z["names"].tolist(), z["labels"]
    num_classes = len(class_names)
    if labels.ndim != 2 or labels.shape[1] % num_classes:
        raise DataError(f"{npz_path}: labels of shape {labels.shape} do not split into {num_classes} classes")
    k = labels.shape[1] // num_classes
    result = {}
    for c, cls in enumerate(class_names):
        if len(subtypes.get(cls, ())) < 2:
            continue
        clusters, truth = [], []
        for i, name in enumerate(names):
            kinds = set(images.get(name, {}).get(cls, ()))
            block = labels[i, c * k:(c + 1) * k]
            if len(kinds) == 1 and block.any():
                clusters.append(int(block.argmax()))
                truth.append(kinds.pop())
        if clusters:
            result[cls] = {**cluster_purity(clusters, truth), "k": k}
    return result


def purity_per_round(run_dir: str | os.PathLike, voc_root: str | os.PathLike) -> dict:
    """``{"rounds": {r: {class: scores}}, "mean": {r: {"purity", "nmi"}}}``
    for every round of ``run_dir`` (see the module docstring); the mean is
    over the classes with sub-types, weighted equally."""
    subtypes, images = read_subtypes(voc_root)
    class_names = list(read_class_names(voc_root)[1:])
    rounds, mean = {}, {}
    for r, folder in round_dirs(run_dir):
        scores = round_purity(folder / "subcategories.npz", class_names, subtypes, images)
        rounds[r] = scores
        if scores:
            mean[r] = {key: float(np.mean([s[key] for s in scores.values()])) for key in ("purity", "majority", "nmi")}
    return {"rounds": rounds, "mean": mean}


def round_models(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(r, final.pt) of every round of an SC-CAM run folder, round 0 first."""
    found = []
    for path in Path(run_dir).glob("round*/final.pt"):
        match = re.fullmatch(r"round(\d+)", path.parent.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def cam_miou_per_round(models: list[tuple[int, Path]], voc_root: str | os.PathLike, names: list[str],
                       out_dir: str | os.PathLike, *, device: str = "cpu", precision: str = "float32",
                       progress: bool = True) -> dict[int, dict]:
    """SC-CAM's per-round figure: the CAMs of each round's classifier
    (``models``: (r, final.pt), e.g. from :func:`round_models`; PSA's
    multi-scale procedure) over ``names``, written to ``out_dir/round<r>``
    (resumable), scored over the background-threshold sweep of eval-cam.
    Returns {r: {"best": mIoU, "threshold": its threshold (chosen on this
    ground truth), "fixed": {"0.15": mIoU, ...}}}."""
    from ..data import VOCRoot, VOCSegmentation
    from ..eval import cam_sweep_summary
    from ..models import load_cam_model
    from .cam import make_cams, resolve_settings

    voc = VOCRoot(voc_root)
    split_file = Path(out_dir) / "names.txt"
    write_text_atomic(split_file, "".join(f"{n}\n" for n in names))
    dataset = VOCSegmentation(voc, str(split_file), labels=True)
    result = {}
    for r, model_path in models:
        model, _ = load_cam_model(model_path)
        cams = Path(out_dir) / f"round{r}"
        make_cams(model, dataset, cams, resolve_settings("psa"), device=device, precision=precision,
                  num_workers=1, progress=progress, inputs={"model": model_path})
        result[r] = cam_sweep_summary(cams, voc.mask_dirs[0], voc.num_classes + 1, names)
    return result
