"""Multi-scale, flip-augmented forward passes over a batch of same-sized
images, the inference pattern of CAM, random-walk and DeepLab stages, with
the settings of a CAM procedure (:class:`CamSettings`) and the batching of
images by size."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import torch
import torch.nn.functional as F

from .errors import UsageError

FUSES = ("sum", "max")
T = TypeVar("T")


@dataclass(frozen=True)
class CamSettings:
    """How the passes of one image are made and fused.

    scales: input scale factors (PSA), or empty when ``sizes`` is given.
    sizes: square input sides in pixels (DRS), or empty.
    flip: also run every input mirrored.
    fuse: "sum" (then max-normalise) or "max" (of per-pass max-normalised maps).
    align_corners: of the bilinear resizing of the maps to the image size.
    normalize: max-normalise (classifier CAMs); False for the refinement
        network's regressed maps, which are fused as they are ("sum" gives
        their mean) and clamped at 0.
    """
    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    sizes: tuple[int, ...] = ()
    flip: bool = True
    fuse: str = "sum"
    align_corners: bool = False
    normalize: bool = True

    def __post_init__(self):
        if bool(self.scales) == bool(self.sizes):
            raise UsageError("give either scales or sizes for CAM inference, not both or neither")
        if any(not s > 0 for s in self.scales) or any(int(s) != s or s < 1 for s in self.sizes):
            raise UsageError(f"scales must be positive and sizes positive integers, got "
                             f"scales {list(self.scales)}, sizes {list(self.sizes)}")
        if self.fuse not in FUSES:
            raise UsageError(f"fuse must be one of {FUSES}, got {self.fuse!r}")

    @property
    def passes(self) -> int:
        return len(self.scales or self.sizes) * (2 if self.flip else 1)

    def describe(self) -> str:
        """One line, e.g. "scales 1 0.5 1.5 2, flip, sum, align_corners False, max-normalised"."""
        inputs = (f"scales {' '.join(f'{s:g}' for s in self.scales)}" if self.scales
                  else f"sizes {' '.join(map(str, self.sizes))}")
        return (f"{inputs}, {'flip' if self.flip else 'no flip'}, {self.fuse}, align_corners "
                f"{self.align_corners}, {'max-normalised' if self.normalize else 'not normalised'}")


def multiscale_maps(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                    scales: Sequence[float], *, flip: bool = True, size: tuple[int, int] | None = None,
                    fuse: str = "sum", align_corners: bool = False,
                    per_pass: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Runs ``forward`` on ``images`` at every scale (and mirrored, with
    ``flip``), brings each output back to ``size`` and fuses them.

    Args:
        forward: (B, 3, h, w) -> (B, K, h', w') maps (any stride).
        images: (N, 3, H, W) normalised images of one size.
        scales: input scale factors, e.g. (1.0, 0.5, 1.5, 2.0); the scaled
            side is round(side * scale), at least 1.
        flip: also run the horizontally mirrored images, one batch with the
            originals, and mirror their maps back.
        size: (H_out, W_out) of the result (default (H, W)).
        fuse: "sum" over all passes (PSA, SC-CAM) or element-wise "max" (DRS).
        align_corners: of the bilinear resizing of the maps to ``size``
            (False as PSA and SC-CAM; DRS resizes with True). The images are
            always resized with False.
        per_pass: applied to the resized maps of each scale, (N, K, H_out,
            W_out) or with ``flip`` (2N, ...) holding the mirrored pass too,
            before fusing; it must treat every map on its own (e.g. DRS's
            max-normalisation of every pass).

    Returns:
        (N, K, H_out, W_out) float32: every pass's maps resized bilinearly
        to ``size`` (and through ``per_pass``), then fused.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"multiscale_maps: images must be (N, 3, H, W), got {tuple(images.shape)}")
    if fuse not in FUSES:
        raise ValueError(f"multiscale_maps: fuse must be one of {FUSES}, got {fuse!r}")
    if not scales or any(not s > 0 for s in scales):
        raise ValueError(f"multiscale_maps: scales must be positive, got {list(scales)}")
    n, _, height, width = images.shape
    size = (height, width) if size is None else tuple(size)
    fused = None
    for scale in scales:
        scaled = (max(1, round(height * scale)), max(1, round(width * scale)))
        x = images if scaled == (height, width) else F.interpolate(
            images, size=scaled, mode="bilinear", align_corners=False)
        if flip:
            x = torch.cat([x, x.flip(-1)])
        maps = F.interpolate(forward(x).float(), size=size, mode="bilinear", align_corners=align_corners)
        if per_pass is not None:
            maps = per_pass(maps)
        passes = [maps[:n], maps[n:].flip(-1)] if flip else [maps]
        for m in passes:
            if fused is None:
                fused = m.clone()
            elif fuse == "sum":
                fused += m
            else:
                torch.maximum(fused, m, out=fused)
    return fused


def image_sizes(paths: Sequence) -> list[tuple[int, int]]:
    """(H, W) of each image file, read from its header (no decoding);
    DataError naming an unreadable file."""
    from PIL import Image

    from .errors import DataError

    sizes = []
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes.append((image.height, image.width))
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"unreadable image '{Path(path).name}' in {Path(path).parent}: {exc}") from exc
    return sizes


def batches_by_size(sizes: Sequence[tuple[int, int]], batch_size: int,
                    indices: Sequence[int] | None = None) -> list[list[int]]:
    """Batches of at most ``batch_size`` images that share one size, so that
    they stack without padding (VOC has few distinct sizes): lists of
    ``indices`` (default range(len(sizes))), ``sizes[i]`` being the size of
    ``indices[i]``. Sizes keep the order of their first appearance; indices
    within a size keep their order."""
    if batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    indices = range(len(sizes)) if indices is None else indices
    groups: dict[tuple[int, int], list[int]] = {}
    for index, size in zip(indices, sizes):
        groups.setdefault(tuple(size), []).append(index)
    return [members[i:i + batch_size] for members in groups.values()
            for i in range(0, len(members), batch_size)]


def shard_by_batch(paths: Sequence, batch_size: int, items: Sequence[T]) -> list[T]:
    """The ``items`` (one per image of ``paths``) this torchrun rank
    processes: the batches of :func:`batches_by_size` over all of them, dealt
    round-robin to the ranks (:func:`wsss_fast.distributed.shard`), in batch
    order. Dealing whole batches keeps every image in the batch it has in a
    single process (re-batching a rank's share gives the same batches), and a
    batch's composition can change the float rounding of its outputs, so the
    files are byte-identical to a single process's."""
    from .distributed import shard

    batches = batches_by_size(image_sizes(paths), batch_size)
    return [items[i] for batch in shard(batches) for i in batch]
