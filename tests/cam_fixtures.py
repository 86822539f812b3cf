"""Helpers shared by the CAM, pseudo-label and refinement tests: a tiny demo
dataset and classifier checkpoints in train-cls's final.pt layout."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wsss_fast.data import make_demo_data
from wsss_fast.data.demo import CLASS_NAMES
from wsss_fast.models import Classifier, build_backbone

NUM_CLASSES = len(CLASS_NAMES) - 1  # demo: 5 object classes


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: the networks here are tiny, and OpenMP threads that
    spin on a busy machine make each forward take 0.5 s instead of 0.3 ms."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def demo_root(root: Path, n_train: int = 6, size: int = 40) -> Path:
    make_demo_data(root, n_train=n_train, n_val=0, size=size, progress=False)
    return root


def demo_with_synthetic_cams(base: Path, n_train: int = 8, size: int = 48):
    """A demo dataset in ``base/demo`` and synthetic CAM files in ``base/cam``
    (:func:`wsss_fast.data.synthetic_cams.synthetic_cams`, image i seeded i);
    returns the opened VOCRoot."""
    import numpy as np

    from wsss_fast.data import VOCRoot
    from wsss_fast.data.synthetic_cams import synthetic_cams
    from wsss_fast.storage import save_scores

    voc = VOCRoot(demo_root(base / "demo", n_train, size))
    for i, name in enumerate(voc.split("train")):
        save_scores(base / "cam" / f"{name}.npz", *synthetic_cams(voc.load_mask(name), np.random.default_rng(i)))
    return voc


def classifier(seed: int = 0, width: int = 4, head_scale: float = 1.0) -> Classifier:
    """A random scratch-backbone classifier in eval mode; ``head_scale``
    multiplies the CAM head (large CAM values make the +1e-5 of the
    normalisation negligible)."""
    torch.manual_seed(seed)
    model = Classifier(build_backbone("scratch", None, width=width), NUM_CLASSES)
    with torch.no_grad():
        model.head.weight.mul_(head_scale)
    return model.eval()


def save_classifier(path: Path, model: Classifier, method: str = "cam", kind: str = "classifier") -> Path:
    """Saves ``model`` as train-cls does (the metadata contract)."""
    metadata = {"kind": kind, "backbone": "scratch",
                "backbone_options": {"width": model.backbone.stage1[0][0].out_channels},
                "num_classes": model.num_classes, "subcategories": 0, "dropout": 0.0,
                "class_names": list(CLASS_NAMES), "method": method}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "metadata": metadata, "config": {}}, path)
    return path
