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
    cls_labels.npz                      image-level labels cache (wsss-fast's; written
                                        here when the root is writable, else in
                                        the user cache, see data/cls_labels.py)
    cls_labels.npy                      optional: the references' labels (read-only)
    class_names.txt                     optional: one class name per line,
                                        background first (default: VOC's 21)

Image-level labels are the classes present in a mask (excluding 0 and 255),
as a float32 multi-hot over the C object classes. They are read from the
cache, else from the references' ``cls_labels.npy`` (a pickled dict name ->
(C,) multi-hot, IRN's integer names such as 2007000032 included, read
without running code: :mod:`wsss_fast.data.cls_labels`), else derived from
the masks and cached. The dataset root is never required to be writable.
"""
from __future__ import annotations

import errno
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
from ..storage import eight_bit, load_label_png
from . import cls_labels

MASK_DIRS = ("SegmentationClass", "SegmentationClassAug")
BUNDLED_SPLITS_DIR = Path(__file__).resolve().parent / "splits"
BUNDLED_SPLITS = ("train", "val", "train_aug")
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
        """(H, W, 3) uint8 RGB (16-bit images scaled to 8 bits, see
        :func:`wsss_fast.storage.eight_bit`). Raises DataError if the file is
        missing, unreadable or of unknown range, CorruptImageError if it
        does not decode."""
        path = self.image_path(name)
        if not path.is_file():
            raise DataError(f"missing image '{path.name}' in {path.parent}")
        try:
            with Image.open(path) as image:
                return np.array(eight_bit(image, path).convert("RGB"))
        except PermissionError as exc:
            raise DataError(f"unreadable image '{path.name}' in {path.parent}: {exc}") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise CorruptImageError(f"corrupt image '{path.name}' in {path.parent}: {exc}") from exc

    def load_mask(self, name: str) -> np.ndarray:
        """(H, W) uint8 class indices, 255 void."""
        return load_label_png(self.mask_path(name))

    def label_cache_path(self) -> Path:
        """Where this root's image-label cache is: ``<root>/cls_labels.npz``
        when it exists there or the root is writable, else the user cache
        (:func:`wsss_fast.data.cls_labels.user_cache_path`)."""
        own = self.root / cls_labels.CACHE_FILE
        user = cls_labels.user_cache_path(self.root)
        if own.is_file() or (not user.is_file() and os.access(self.root, os.W_OK)):
            return own
        return user

    def image_labels(self, names: Sequence[str], *, cache: bool = True,
                     progress: bool = True) -> dict[str, np.ndarray]:
        """name -> (C,) float32 multi-hot for every name: from the cache (see
        :meth:`label_cache_path`), the references' ``cls_labels.npy`` or the
        masks; labels derived from masks are added to the cache when
        ``cache`` (in the user cache when the root refuses the write)."""
        cache_path = self.label_cache_path()
        known: dict[str, np.ndarray] = {}
        reference = self.root / cls_labels.REFERENCE_FILE
        if reference.is_file():
            known.update(cls_labels.read_reference_labels(reference))
        if cache_path.is_file():
            known.update(cls_labels.read_cache(cache_path))
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
            raise DataError(f"image labels of '{bad[0]}' have shape {known[bad[0]].shape}, "
                            f"expected ({self.num_classes},) for {self.num_classes} classes "
                            f"(from {cache_path if cache_path.is_file() else reference})")
        if todo and cache:
            self._write_label_cache(cache_path, known)
        return {n: known[n] for n in names}

    def _write_label_cache(self, path: Path, labels: dict[str, np.ndarray]) -> None:
        try:
            cls_labels.write_cache(path, labels)
        except OSError as exc:  # e.g. a read-only mount, or root's chmod that os.access ignores
            if path.parent != self.root or exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            cls_labels.write_cache(cls_labels.user_cache_path(self.root), labels)
