"""Image-level label files: wsss-fast's own cache and the references'
``cls_labels.npy``, both read without running any code from the file.

``cls_labels.npz`` (written by wsss-fast): a numpy archive readable with
``allow_pickle=False``::

    format  uint8 scalar   format version, 1
    names   str (N,)       image names
    labels  float32 (N, C) multi-hot over the C object classes

``cls_labels.npy`` (shipped by PSA, SC-CAM, IRN, DRS): ``numpy.save`` of a
dict name -> (C,) multi-hot, i.e. a pickle. :func:`read_reference_labels`
unpickles it with an allow-list of the four numpy callables such a file
needs (array and scalar reconstruction, ndarray, dtype) and then checks that
the result is a dict of str or int keys to numeric vectors; any other global
(``os.system``, ``builtins.eval``, ...) is refused before it is looked up,
so a crafted file cannot run code.

Where the cache goes: the dataset root when it is writable, else a user
cache folder (:func:`user_cache_dir`), one file per root, so a read-only
shared VOC copy works and is never written to.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..storage import atomic_output, read_npz

CACHE_FILE = "cls_labels.npz"          # wsss-fast's cache, in the root when it is writable
REFERENCE_FILE = "cls_labels.npy"      # the references' pickled dict, read-only
FORMAT_VERSION = 1

# (module, name) of the only globals a reference cls_labels.npy may use:
# numpy 1.x writes numpy.core.*, numpy 2.x numpy._core.*.
_ALLOWED_GLOBALS = {
    (module, name)
    for core in ("numpy.core.multiarray", "numpy._core.multiarray")
    for module, name in ((core, "_reconstruct"), (core, "scalar"))
} | {("numpy", "ndarray"), ("numpy", "dtype")}


class _LabelsUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, numpy scalars and builtin containers only."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a label file holds "
                                         "arrays, not code")
        return super().find_class(module, name)


def _name_from_key(key) -> str:
    """cls_labels keys: 'YYYY_NNNNNN' strings (PSA) or ints YYYYNNNNNN (IRN)."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        text = str(int(key))
        return f"{text[:4]}_{text[4:]}"
    if isinstance(key, str):
        return key
    raise ValueError(f"key {key!r} of type {type(key).__name__} is not an image name")


def read_reference_labels(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The references' pickled ``cls_labels.npy``: name -> float32 multi-hot.

    Raises DataError naming the file when it is not a .npy file, when its
    pickle needs anything but numpy arrays and builtin containers, or when
    it does not hold a dict of image names to numeric vectors.
    """
    path = Path(path)
    where = f"image-label file '{path.name}' in {path.parent}"
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            if dtype != np.dtype(object) or shape != ():
                raise DataError(f"{where} holds a {dtype} array of shape {shape}, "
                                "not the references' dict of image labels")
            raw = _LabelsUnpickler(io.BytesIO(f.read())).load()
    except DataError:
        raise
    except Exception as exc:  # not .npy, damaged, or a refused global
        raise DataError(f"unreadable {where}: {type(exc).__name__}: {exc}") from None
    raw = raw.item() if isinstance(raw, np.ndarray) and raw.shape == () else raw
    if not isinstance(raw, dict):
        raise DataError(f"{where} does not hold a dict of image labels")
    labels = {}
    for key, value in raw.items():
        if not isinstance(value, np.ndarray) or value.ndim != 1 or value.dtype.kind not in "biuf":
            raise DataError(f"{where}: the labels of {key!r} are not a numeric vector")
        try:
            labels[_name_from_key(key)] = value.astype(np.float32)
        except ValueError as exc:
            raise DataError(f"{where}: {exc}") from None
    return labels


def read_cache(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """wsss-fast's ``cls_labels.npz``: name -> float32 multi-hot. Raises
    DataError naming the file when it is damaged or of another format."""
    path = Path(path)
    with read_npz(path, "image-label cache", FORMAT_VERSION) as z:
        names, labels = z["names"], z["labels"].astype(np.float32)
    if names.ndim != 1 or labels.ndim != 2 or len(names) != len(labels):
        raise DataError(f"image-label cache {path}: {len(names)} names but labels of shape {labels.shape}")
    return {str(n): row for n, row in zip(names, labels)}


def load_cls_labels(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Either format, by suffix: ``.npz`` (:func:`read_cache`) or the
    references' ``.npy`` (:func:`read_reference_labels`)."""
    path = Path(path)
    return read_cache(path) if path.suffix == ".npz" else read_reference_labels(path)


def write_cache(path: str | os.PathLike, labels: dict[str, np.ndarray]) -> None:
    """Writes ``labels`` (name -> (C,) multi-hot, every C equal) as
    ``cls_labels.npz``, atomically; raises OSError when the folder is not
    writable."""
    names = sorted(labels)
    matrix = (np.stack([labels[n] for n in names]).astype(np.float32) if names
              else np.zeros((0, 0), np.float32))
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, format=np.uint8(FORMAT_VERSION), names=np.array(names, dtype=str),
                            labels=matrix)


def user_cache_dir() -> Path:
    """``$WSSS_FAST_CACHE``, else ``$XDG_CACHE_HOME/wsss-fast``, else
    ``~/.cache/wsss-fast``."""
    if os.environ.get("WSSS_FAST_CACHE"):
        return Path(os.environ["WSSS_FAST_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "wsss-fast"


def user_cache_path(root: str | os.PathLike) -> Path:
    """The user-cache file of a dataset root (one per resolved root path)."""
    key = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:16]
    return user_cache_dir() / "cls-labels" / f"{key}-{CACHE_FILE}"
