"""Regenerates wsss_fast/data/assets/fashion_mnist_subset.npz from the Debian
package ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``).

Takes the first ``--train-per-class`` items of each class from the Fashion-MNIST
training set (objects of the demo's train scenes) and the first
``--val-per-class`` of each class from its test set (objects of the val
scenes), so that no item appears in both splits. Only a maintainer runs this;
building the demo dataset needs the committed .npz alone.

    PYTHONPATH=. python tools/make_fashion_mnist_subset.py [--src /usr/share/datasets/fashion-mnist]
"""
from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np

from wsss_fast.data.demo import ASSET_PATH, FASHION_MNIST_CLASSES
from wsss_fast.storage import atomic_output


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: big-endian header, then uint8 data)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first ``per_class`` items of each class, in file order."""
    picks = [np.flatnonzero(labels == c)[:per_class] for c in range(len(FASHION_MNIST_CLASSES))]
    return np.sort(np.concatenate(picks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--val-per-class", type=int, default=60)
    args = parser.parse_args()
    arrays = {"class_names": np.array(FASHION_MNIST_CLASSES)}
    for split, prefix, per_class in (("train", "train", args.train_per_class),
                                     ("val", "t10k", args.val_per_class)):
        images = read_idx(args.src / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(args.src / f"{prefix}-labels-idx1-ubyte.gz")
        keep = first_per_class(labels, per_class)
        arrays[f"{split}_images"] = images[keep]
        arrays[f"{split}_labels"] = labels[keep]
    with atomic_output(ASSET_PATH) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    print(f"wrote {ASSET_PATH} ({ASSET_PATH.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
