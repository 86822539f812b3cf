"""The PASCAL VOC colour palette and class names.

Label maps are uint8 (H, W) arrays of class indices: 0 background, 1..C the
object classes, 255 void/ignore. They are stored as palette PNGs with the VOC
palette, so that any image viewer shows them in VOC colours while the pixel
values stay the class indices.
"""
from __future__ import annotations

import numpy as np

VOID = 255

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


def voc_palette() -> np.ndarray:
    """The (256, 3) uint8 VOC palette (the devkit's bit-interleaving colour map).

    Index 0 is black, 255 is (224, 224, 192); every index has its own colour.
    """
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        c, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette[index] = (r, g, b)
    return palette


VOC_PALETTE = voc_palette()


def colorize(label: np.ndarray) -> np.ndarray:
    """(H, W) uint8 class indices -> (H, W, 3) uint8 RGB in the VOC palette."""
    return VOC_PALETTE[np.asarray(label, dtype=np.uint8)]


def rgb_to_index(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 VOC-palette colours -> (H, W) uint8 class indices.

    Raises ValueError on a colour that is not in the palette.
    """
    rgb = np.asarray(rgb, dtype=np.uint8)
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    palette_code = ((VOC_PALETTE[:, 0].astype(np.int32) << 16)
                    | (VOC_PALETTE[:, 1].astype(np.int32) << 8) | VOC_PALETTE[:, 2])
    order = np.argsort(palette_code)
    pos = np.searchsorted(palette_code[order], code).clip(0, 255)
    found = palette_code[order][pos] == code
    if not found.all():
        y, x = np.argwhere(~found)[0]
        raise ValueError(f"colour {tuple(int(v) for v in rgb[y, x])} at (y={y}, x={x}) "
                         "is not a VOC palette colour")
    return order[pos].astype(np.uint8)
