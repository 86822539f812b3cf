"""Images of a split paired with label maps from a folder of PNGs (pseudo
labels, CRF labels, or ground truth), for training segmentation networks."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..palette import VOID
from ..storage import load_label_png
from .dataset import ImagesWith, VOCSegmentation
from .voc import VOCRoot


class LabelledImages(ImagesWith):
    """Images of ``split`` with ``<labels_dir>/<name>.png`` as ``target``.

    Each item is a dict: ``name``, ``image`` (uint8 tensor (3, H, W), RGB),
    ``target`` (int64 tensor (H, W): class indices 0..num_classes-1, 255
    ignored) and, with ``image_labels``, ``label`` (float32 (C,) multi-hot of
    the image's object classes, as :class:`VOCSegmentation` gives it).

    Missing label files and a missing folder are reported when the dataset
    is built; a label map whose size differs from its image, or that holds a
    value outside the classes and 255, when the item is read. Both are
    DataErrors naming the file.

    Args:
        root: a VOC root or an opened :class:`VOCRoot`.
        split: split name or list file (see :meth:`VOCRoot.split`).
        labels_dir: folder of label PNGs (palette, grey-level or VOC RGB).
        on_corrupt: see :class:`VOCSegmentation`.
        image_labels: also give each image's class labels.
    """

    def __init__(self, root: str | os.PathLike | VOCRoot, split: str, labels_dir: str | os.PathLike, *,
                 on_corrupt: str = "stop", image_labels: bool = False):
        super().__init__(VOCSegmentation(root, split, labels=image_labels, on_corrupt=on_corrupt))
        self.labels_dir = Path(labels_dir)
        if not self.labels_dir.is_dir():
            raise DataError(f"label folder {self.labels_dir} is not a directory")
        present = {entry.name for entry in os.scandir(self.labels_dir)}
        missing = [n for n in self.images.names if f"{n}.png" not in present]
        if missing:
            shown = ", ".join(f"'{n}.png'" for n in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise DataError(f"missing label maps {shown}{more} in {self.labels_dir} "
                            f"({len(missing)} of the {len(self.images)} images of split {split!r})")
        self.num_classes = len(self.images.class_names)  # background included

    def extras(self, item: dict) -> dict:
        path = self.labels_dir / f"{item['name']}.png"
        target = load_label_png(path)
        height, width = item["image"].shape[-2:]
        if target.shape != (height, width):
            raise DataError(f"label map '{path.name}' in {path.parent} is {target.shape[1]}x{target.shape[0]} "
                            f"but its image is {width}x{height}")
        bad = (target >= self.num_classes) & (target != VOID)
        if bad.any():
            raise DataError(f"label map '{path.name}' in {path.parent} holds value {int(target[bad][0])}, "
                            f"outside 0..{self.num_classes - 1} and {VOID}")
        return {"target": torch.from_numpy(target.astype(np.int64))}
