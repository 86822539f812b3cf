"""A torch Dataset over a split of a VOC-style root, for classifier training,
CAM inference and evaluation."""
from __future__ import annotations

import os
import warnings
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from ..errors import DataError
from .voc import CorruptImageError, VOCRoot

ON_CORRUPT = ("stop", "skip")


class CorruptImageWarning(UserWarning):
    """A corrupt image was skipped."""


class VOCSegmentation(Dataset):
    """Images of one split, with image-level labels and, optionally, masks.

    Each item is a dict: ``name`` (str), ``image`` (uint8 tensor (3, H, W),
    RGB), ``label`` (float32 tensor (C,) multi-hot, if ``labels``), ``mask``
    (int64 tensor (H, W), 255 void, if ``masks``), passed through
    ``transform`` when given.

    Args:
        root: a VOC root or an already opened :class:`VOCRoot`.
        split: split name or list-file path (see :meth:`VOCRoot.split`).
        labels: attach image-level labels (from the label cache or the
            references' ``cls_labels.npy``, else derived from the masks and
            cached; see :meth:`VOCRoot.image_labels`).
        masks: attach the ground-truth mask.
        on_corrupt: "stop" raises CorruptImageError (a DataError the CLI
            reports in one line); "skip" warns with CorruptImageWarning and
            yields None, which :func:`collate_skip_none` drops from the batch.
        transform: callable on the item dict, returning the item dict.

    Missing images are reported when the dataset is built, not mid-epoch.
    """

    def __init__(self, root: str | os.PathLike | VOCRoot, split: str, *, labels: bool = True,
                 masks: bool = False, on_corrupt: str = "stop",
                 transform: Callable[[dict], dict] | None = None):
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}")
        self.voc = root if isinstance(root, VOCRoot) else VOCRoot(root)
        self.names = self.voc.split(split)
        self.voc.check_images(self.names)
        self.labels = self.voc.image_labels(self.names) if labels else None
        self.masks = masks
        self.on_corrupt = on_corrupt
        self.transform = transform

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.voc.class_names

    @property
    def num_classes(self) -> int:
        return self.voc.num_classes

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict | None:
        name = self.names[index]
        try:
            image = self.voc.load_image(name)
        except CorruptImageError as exc:
            if self.on_corrupt == "stop":
                raise
            warnings.warn(f"skipping {exc}", CorruptImageWarning, stacklevel=2)
            return None
        item = {"name": name, "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))}
        if self.labels is not None:
            item["label"] = torch.from_numpy(self.labels[name])
        if self.masks:
            mask = self.voc.load_mask(name)
            if mask.shape != image.shape[:2]:
                raise DataError(f"mask of '{name}' is {mask.shape[1]}x{mask.shape[0]} but its image "
                                f"is {image.shape[1]}x{image.shape[0]} ({self.voc.root})")
            item["mask"] = torch.from_numpy(mask.astype(np.int64))
        return self.transform(item) if self.transform is not None else item


class ImagesWith(Dataset):
    """The items of a :class:`VOCSegmentation` (``images``) with entries a
    later stage adds per image (its labels, targets, CAMs): subclasses
    implement :meth:`extras`. A skipped corrupt image (None) stays None."""

    def __init__(self, images: VOCSegmentation):
        self.images = images

    @property
    def names(self) -> list[str]:
        return self.images.names

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.images.class_names

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict | None:
        item = self.images[index]
        return None if item is None else {**item, **self.extras(item)}

    def extras(self, item: dict) -> dict:
        """The entries to add to ``item`` (a VOCSegmentation item)."""
        raise NotImplementedError


def collate_skip_none(batch: list[dict | None]) -> dict | None:
    """``default_collate`` of the items that are not None (skipped corrupt
    images); None when all of the batch was skipped."""
    kept = [item for item in batch if item is not None]
    return default_collate(kept) if kept else None
