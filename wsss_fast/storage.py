"""Compact on-disk formats for score maps and label maps, written atomically.

Score maps (CAMs, CRF outputs, random-walk results): one ``<name>.npz`` per
image, a zip-deflate compressed numpy archive that ``numpy.load`` opens, with
only the channels of the classes present in the image::

    format    uint8 scalar   format version, 1
    keys      int16 (K,)     label index of each channel: 1..C for object
                             classes, 0 for background (CAM files hold only
                             object classes; CRF score maps also hold 0)
    encoding  str scalar     "float16" or "uint8"
    data      (K, H, W)      float16 values, or uint8 codes q with value
                             q / 255 * scale[k]
    scale     float32 (K,)   per-channel maximum (only with "uint8")

Two classes on a 500 x 375 VOC image take about 0.5-0.6 MB as float16 and
0.05-0.3 MB quantised (measured on smooth and on upsampled-noise maps),
instead of 15.8 MB for 21 float32 maps or the float dicts of the reference
code. K may be 0 (no class present).

Label maps: ``<name>.png``, uint8 class indices in a palette PNG with the VOC
palette (see :mod:`wsss_fast.palette`); 255 is void.

Every writer goes through :func:`atomic_output`: the bytes go to a hidden
temporary file in the target directory, which is renamed onto the target only
once complete, so an interrupted run leaves either the old file or none,
never a truncated one (a killed process may leave a ``.<name>.*.tmp`` file,
which no reader lists). Files get the mode a plain ``open`` would give them
(0666 less the process's umask), so the other users of a shared run folder
can read them.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
from PIL import Image

from .palette import VOC_PALETTE, rgb_to_index
from .errors import DataError

FORMAT_VERSION = 1
ENCODINGS = ("float16", "uint8")


def current_umask() -> int:
    """The process's umask, read without changing it where the system
    tells it (Linux's /proc/self/status); elsewhere set and restored."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` to write to; renames it onto
    ``path`` when the block ends normally and deletes it when it raises.

    Creates the parent directory. Writers given the temporary path must not
    rely on its suffix (pass the format explicitly).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes it 0600 whatever the umask
    finally:
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def output_dir_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be (or become) an output folder, or None: it is
    a file, a file stands where a parent folder should be, or the nearest
    existing parent is not writable. Nothing is created."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            return f"{path} is a file, not a folder"
        return None if os.access(path, os.W_OK) else f"{path} is not writable"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot create {path}: {parent} is a file"
    if not os.access(parent, os.W_OK):
        return f"cannot create {path}: {parent} is not writable"
    return None


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


class ScoreMap(NamedTuple):
    """Score maps of the classes present in one image.

    keys: int64 (K,) label index of each channel. data: float32 (K, H, W).
    """
    keys: np.ndarray
    data: np.ndarray

    def dense(self, num_classes: int, fill: float = 0.0) -> np.ndarray:
        """(num_classes, H, W) float32 with each channel at its key, ``fill`` elsewhere."""
        if len(self.keys) and (self.keys.min() < 0 or self.keys.max() >= num_classes):
            raise ValueError(f"keys {self.keys.tolist()} do not fit num_classes={num_classes}")
        out = np.full((num_classes, *self.data.shape[1:]), fill, dtype=np.float32)
        out[self.keys] = self.data
        return out


def save_scores(path: str | os.PathLike, keys, data, encoding: str = "float16") -> None:
    """Writes score maps in the format of this module's docstring.

    Args:
        path: target ``.npz`` file.
        keys: (K,) label indices, distinct, in [0, 32767].
        data: (K, H, W) float scores; finite, and >= 0 for ``encoding="uint8"``.
        encoding: "float16" (default) or "uint8" (quantised per channel).
    """
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 3 or data.shape[0] != len(keys):
        raise ValueError(f"save_scores({path}): data must be (K, H, W) with K = len(keys) = "
                         f"{len(keys)}, got shape {data.shape}")
    if len(np.unique(keys)) != len(keys) or (len(keys) and (keys.min() < 0 or keys.max() > 32767)):
        raise ValueError(f"save_scores({path}): keys must be distinct and in [0, 32767], "
                         f"got {keys.tolist()}")
    if not np.isfinite(data).all():
        raise ValueError(f"save_scores({path}): data holds NaN or inf")
    arrays = {"format": np.uint8(FORMAT_VERSION), "keys": keys.astype(np.int16),
              "encoding": np.array(encoding)}
    if encoding == "float16":
        arrays["data"] = data.astype(np.float16)
    elif encoding == "uint8":
        if (data < 0).any():
            raise ValueError(f"save_scores({path}): uint8 encoding needs scores >= 0")
        scale = data.reshape(len(keys), -1).max(axis=1, initial=0.0).astype(np.float32)
        safe = np.where(scale > 0, scale, 1.0)[:, None, None]
        arrays["data"] = np.rint(data / safe * 255.0).astype(np.uint8)
        arrays["scale"] = scale
    else:
        raise ValueError(f"save_scores({path}): encoding must be one of {ENCODINGS}, got {encoding!r}")
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


@contextlib.contextmanager
def read_npz(path: str | os.PathLike, what: str, version: int) -> Iterator[np.lib.npyio.NpzFile]:
    """Opens one of wsss-fast's ``.npz`` formats (no pickle) after checking
    its ``format`` entry; any error inside the block (a damaged zip, a
    missing key, a bad value) becomes a DataError naming ``what`` and the
    file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            found = int(z["format"])
            if found != version:
                raise DataError(f"{what} {path}: format version {found}, this wsss_fast reads {version}")
            yield z
    except DataError:
        raise
    except Exception as exc:  # zip, key and value errors of a damaged or foreign file
        raise DataError(f"unreadable {what} '{path.name}' in {path.parent}: "
                        f"{type(exc).__name__}: {exc}") from exc


def load_scores(path: str | os.PathLike) -> ScoreMap:
    """Reads a file written by :func:`save_scores`; raises DataError naming the
    file if it is missing, unreadable or not in this format."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing score file '{path.name}' in {path.parent}")
    with read_npz(path, "score file", FORMAT_VERSION) as z:
        keys = z["keys"].astype(np.int64)
        encoding = str(z["encoding"])
        data = z["data"].astype(np.float32)
        if encoding == "uint8":
            data *= (z["scale"].astype(np.float32) / 255.0)[:, None, None]
        elif encoding != "float16":
            raise DataError(f"score file {path}: unknown encoding {encoding!r}")
    return ScoreMap(keys, data)


def require_score_files(directory: str | os.PathLike, names, what: str = "CAM files") -> None:
    """Raises DataError naming the first few ``<name>.npz`` missing in ``directory``."""
    directory = Path(directory)
    missing = [n for n in names if not (directory / f"{n}.npz").is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(f"missing {what} {', '.join(repr(n + '.npz') for n in missing[:3])}{more} "
                        f"in {directory}")


def eight_bit(image: Image.Image, path: str | os.PathLike) -> Image.Image:
    """``image`` in an 8-bit mode: 16-bit grey levels (PIL's "I;16*" modes,
    e.g. a 16-bit PNG) scaled by 1/256, 8-bit modes as they are (PIL reads
    16-bit colour PNGs as 8-bit RGB itself). 32-bit integer and float
    images, whose range is unknown, raise DataError naming the file (PIL
    would clip them to white)."""
    if image.mode.startswith("I;16"):
        values = np.array(image, dtype=np.uint16)
        return Image.fromarray((values >> 8).astype(np.uint8), mode="L")
    if image.mode in ("I", "F"):
        path, kind = Path(path), "float" if image.mode == "F" else "integer"
        raise DataError(f"image '{path.name}' in {path.parent} has 32-bit {kind} pixels of unknown range; "
                        "convert it to 8 or 16 bits per channel")
    return image


def save_label_png(path: str | os.PathLike, label) -> None:
    """Writes a (H, W) uint8 label map as a VOC-palette PNG, atomically."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"save_label_png({path}): label must be (H, W), got shape {label.shape}")
    if label.dtype != np.uint8:
        if label.size and (label.min() < 0 or label.max() > 255):
            raise ValueError(f"save_label_png({path}): values must be in [0, 255]")
        label = label.astype(np.uint8)
    image = Image.fromarray(label, mode="P")
    image.putpalette(VOC_PALETTE.reshape(-1).tolist())
    with atomic_output(path) as tmp:
        image.save(tmp, format="PNG")


def load_label_png(path: str | os.PathLike) -> np.ndarray:
    """Reads a label map PNG: palette ("P"; the pixel values are the indices),
    grey-level index ("L") or VOC-coloured RGB. Returns (H, W) uint8.

    Raises DataError naming the file and directory when it is missing,
    unreadable or of another kind.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing label map '{path.name}' in {path.parent}")
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("P", "L"):
                return np.array(image, dtype=np.uint8)
            if mode in ("RGB", "RGBA"):
                return rgb_to_index(np.array(image.convert("RGB")))
            if mode in ("I", "I;16"):
                values = np.array(image)
                if values.min() < 0 or values.max() > 255:
                    raise ValueError(f"values outside [0, 255] in a {mode} image")
                return values.astype(np.uint8)
    except (OSError, ValueError) as exc:
        raise DataError(f"unreadable label map '{path.name}' in {path.parent}: {exc}") from exc
    raise DataError(f"label map '{path.name}' in {path.parent} has PIL mode {mode!r}; "
                    "expected a palette, grey-level index or VOC-coloured RGB PNG")
