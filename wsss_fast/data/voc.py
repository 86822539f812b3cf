"""Reader of a PASCAL VOC 2012 style directory.

Layout (``root`` is ``VOCdevkit/VOC2012``; the VOCdevkit folder itself is
accepted too)::

    JPEGImages/<name>.jpg               RGB images
    SegmentationClass/<name>.png        VOC masks (palette PNG, 255 void band)
    SegmentationClassAug/<name>.png     optional SBD-converted masks (palette
                                        or index PNG), for train_aug
    ImageSets/Segmentation/<split>.txt  split lists, one name per line (VOC's
                                        train, val and the train_aug list of
                                        the references ship with wsss_fast,
                                        see data/splits/README.md)
    cls_labels.npy                      image-level labels cache (written here)
    class_names.txt                     optional: one class name per line,
                                        background first (default: VOC's 21)

Image-level labels are the classes present in a mask (excluding 0 and 255),
as a float32 multi-hot over the C object classes; they are cached in
``cls_labels.npy`` as the reference code ships them (a pickled dict name ->
(C,) multi-hot; IRN's integer names such as 2007000032 are read as well).
"""
from __future__ import annotations

import gzip
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..errors import DataError
from ..palette import VOC_CLASSES, VOID
from ..storage import load_label_png, save_npy_atomic

MASK_DIRS = ("SegmentationClass", "SegmentationClassAug")
BUNDLED_SPLITS_DIR = Path(__file__).resolve().parent / "splits"
BUNDLED_SPLITS = ("train", "val", "train_aug")
CLS_LABELS_FILE = "cls_labels.npy"
CLASS_NAMES_FILE = "class_names.txt"


class CorruptImageError(DataError):
    """An image file exists but does not decode."""


def labels_from_mask(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W) uint8 mask -> (num_classes,) float32 multi-hot of the object
    classes present (mask value c in 1..num_classes sets entry c - 1).

    Raises ValueError on a value that is neither a class nor 255.
    """
    values = np.unique(mask)
    values = values[(values != 0) & (values != VOID)]
    if len(values) and values.max() > num_classes:
        raise ValueError(f"mask value {int(values.max())} is outside 0..{num_classes} and 255")
    hot = np.zeros(num_classes, dtype=np.float32)
    hot[values.astype(np.int64) - 1] = 1.0
    return hot


def _name_from_key(key) -> str:
    """cls_labels keys: 'YYYY_NNNNNN' strings (PSA) or ints YYYYNNNNNN (IRN)."""
    if isinstance(key, (int, np.integer)):
        text = str(int(key))
        return f"{text[:4]}_{text[4:]}"
    return str(key)


def load_cls_labels(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a ``cls_labels.npy`` dict; returns name -> float32 multi-hot."""
    path = Path(path)
    try:
        raw = np.load(path, allow_pickle=True).item()
    except Exception as exc:  # a damaged or foreign .npy
        raise DataError(f"unreadable image-label cache '{path.name}' in {path.parent}: {exc}") from exc
    if not isinstance(raw, dict):
        raise DataError(f"image-label cache {path} does not hold a dict")
    return {_name_from_key(k): np.asarray(v, dtype=np.float32) for k, v in raw.items()}


def _split_name(token: str) -> str:
    """A name as the VOC files spell it, from a bare name, a reference-code
    path (``/JPEGImages/<name>.jpg``) or IRN's digits-only form (2007000032)."""
    name = Path(token).stem
    return f"{name[:4]}_{name[4:]}" if re.fullmatch(r"\d{10}", name) else name


def parse_split_list(path: str | os.PathLike) -> list[str]:
    """Names in a split list file (plain or .gz): one per line, either a bare
    name, IRN's digits-only name, or PSA's ``/JPEGImages/<name>.jpg
    /SegmentationClassAug/<name>.png``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing split list '{path.name}' in {path.parent}")
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return [_split_name(line.split()[0]) for line in raw.decode().splitlines() if line.strip()]


def bundled_split(split: str) -> list[str]:
    """VOC 2012 train (1464), val (1449) or train_aug (10582) names, as shipped
    with wsss_fast (see data/splits/README.md)."""
    if split not in BUNDLED_SPLITS:
        raise ValueError(f"bundled splits are {BUNDLED_SPLITS}, got {split!r}")
    return parse_split_list(BUNDLED_SPLITS_DIR / f"voc12_{split}.txt.gz")


def read_class_names(root: str | os.PathLike) -> tuple[str, ...]:
    """Class names of a VOC-style root, background first: its
    ``class_names.txt`` (one per line) if it has one, else VOC's 21."""
    names_file = Path(root) / CLASS_NAMES_FILE
    if not names_file.is_file():
        return VOC_CLASSES
    names = tuple(n.strip() for n in names_file.read_text().splitlines() if n.strip())
    if len(names) < 2:
        raise DataError(f"{names_file} must list background and at least one class")
    return names


class VOCRoot:
    """Paths, split lists, images, masks and image-level labels of a VOC-style root.

    Args:
        root: the VOC2012 directory (or a VOCdevkit containing VOC2012).
        mask_dirs: mask folders to look in, in order of preference.
    """

    def __init__(self, root: str | os.PathLike, mask_dirs: Sequence[str] = MASK_DIRS):
        root = Path(root)
        if (root / "VOC2012").is_dir() and not (root / "JPEGImages").is_dir():
            root = root / "VOC2012"
        if not root.is_dir():
            raise DataError(f"VOC root {root} is not a directory")
        if not (root / "JPEGImages").is_dir():
            raise DataError(f"VOC root {root} has no JPEGImages folder")
        self.root = root
        self.image_dir = root / "JPEGImages"
        self.mask_dirs = [root / d for d in mask_dirs if (root / d).is_dir()]
        self.class_names = read_class_names(root)

    @property
    def num_classes(self) -> int:
        """Number of object classes C (background excluded)."""
        return len(self.class_names) - 1

    def split(self, split: str | os.PathLike) -> list[str]:
        """Image names of a split: a path to a list file, or a name looked up as
        ``ImageSets/Segmentation/<split>.txt`` and, for a VOC root (no
        class_names.txt) without that file, in the lists bundled with
        wsss_fast (train, val, train_aug)."""
        candidate = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not candidate.is_file() and Path(split).is_file():
            path = Path(split)
        elif (not candidate.is_file() and split in BUNDLED_SPLITS
              and self.class_names == VOC_CLASSES):
            path = BUNDLED_SPLITS_DIR / f"voc12_{split}.txt.gz"
        else:
            path = candidate
        names = parse_split_list(path)
        if not names:
            raise DataError(f"split list {path} is empty")
        return names

    def image_path(self, name: str) -> Path:
        return self.image_dir / f"{name}.jpg"

    def mask_path(self, name: str) -> Path:
        """The mask of ``name`` in the first mask folder that has one; raises
        DataError listing the folders searched when none has."""
        for d in self.mask_dirs:
            path = d / f"{name}.png"
            if path.is_file():
                return path
        where = ", ".join(str(d) for d in self.mask_dirs) or f"{self.root} (no mask folder)"
        raise DataError(f"missing mask '{name}.png' in {where}")

    def check_images(self, names: Iterable[str]) -> None:
        """Raises DataError naming the first missing images and the folder."""
        present = {p.name for p in os.scandir(self.image_dir)}
        missing = [n for n in names if f"{n}.jpg" not in present]
        if missing:
            shown = ", ".join(f"'{n}.jpg'" for n in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise DataError(f"missing images {shown}{more} in {self.image_dir}")

    def load_image(self, name: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB. Raises DataError if the file is missing or
        unreadable, CorruptImageError if it does not decode."""
        path = self.image_path(name)
        if not path.is_file():
            raise DataError(f"missing image '{path.name}' in {path.parent}")
        try:
            with Image.open(path) as image:
                return np.array(image.convert("RGB"))
        except PermissionError as exc:
            raise DataError(f"unreadable image '{path.name}' in {path.parent}: {exc}") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise CorruptImageError(f"corrupt image '{path.name}' in {path.parent}: {exc}") from exc

    def load_mask(self, name: str) -> np.ndarray:
        """(H, W) uint8 class indices, 255 void."""
        return load_label_png(self.mask_path(name))

    def image_labels(self, names: Sequence[str], *, cache: bool = True,
                     progress: bool = True) -> dict[str, np.ndarray]:
        """name -> (C,) float32 multi-hot for every name, from ``cls_labels.npy``
        where it has the name, else from the mask (then added to the cache,
        which is rewritten atomically when ``cache``)."""
        cache_path = self.root / CLS_LABELS_FILE
        known = load_cls_labels(cache_path) if cache_path.is_file() else {}
        todo = [n for n in names if n not in known]
        for name in tqdm(todo, desc="image labels from masks", unit="mask",
                         disable=not progress or len(todo) < 100):
            path = self.mask_path(name)
            try:
                known[name] = labels_from_mask(load_label_png(path), self.num_classes)
            except ValueError as exc:
                raise DataError(f"mask '{path.name}' in {path.parent}: {exc}") from exc
        bad = [n for n in names if known[n].shape != (self.num_classes,)]
        if bad:
            raise DataError(f"{cache_path}: labels of '{bad[0]}' have shape {known[bad[0]].shape}, "
                            f"expected ({self.num_classes},) for {self.num_classes} classes")
        if todo and cache:
            save_npy_atomic(cache_path, known)
        return {n: known[n] for n in names}
