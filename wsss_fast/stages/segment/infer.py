"""DeepLab inference over a split: images batched by size, multi-scale and
flipped forward passes with their logits averaged, softmax, optional dense
CRF (DeepLab settings) on a process pool, and one label PNG per image at
image resolution.

Reads a trained DeepLab network (final.pt) and the images of a split;
writes ``<out>/<name>.png`` (class indices, VOC palette).

Resume and sharding: images whose PNG exists are skipped; under torchrun
every rank lists the rest, waits for the others
(:func:`wsss_fast.distributed.barrier`) and takes its share
(:func:`wsss_fast.inference.shard_by_batch`), as make-cam does.
"""
from __future__ import annotations

import os
import time
from collections import deque
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ...cpu import inference_context, prepare_model
from ...inference import batches_by_size, image_sizes, shard_by_batch
from ...data.dataset import VOCSegmentation
from ...data.voc import VOCRoot
from ...distributed import barrier, local_device, rank, world_size
from ...inference import multiscale_maps
from ...models.deeplab import DeepLab
from ...outputs import OutputFolder
from ...storage import save_label_png
from ...transforms import normalize


@torch.inference_mode()
def _probabilities(model: DeepLab, loader: DataLoader, scales: Sequence[float], flip: bool,
                   msc: Sequence[float], device: torch.device,
                   precision: str) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, uint8 image (3, H, W) on CPU, class probabilities (C, H, W)
    float32 on ``device``) per image: softmax of the logits averaged over
    every scale and flip, each upsampled bilinearly to (H, W); with ``msc``
    each pass's logits are deeplab-pytorch's MSC maximum over the input and
    its copies scaled by ``msc`` (at the input's logit grid). On CUDA the
    network runs in float16 autocast, on the CPU in ``precision``
    (:func:`wsss_fast.cpu.inference_context`)."""
    passes = len(scales) * (2 if flip else 1)

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = layout(x)
        return model(x, msc=msc)[-1] if msc else model(x)

    for batch in loader:
        images = normalize(batch["image"].to(device, non_blocking=True))
        with torch.autocast(device.type, enabled=device.type == "cuda"), \
                inference_context(precision, device.type) as layout:
            logits = multiscale_maps(forward, images, scales, flip=flip)
        probs = torch.softmax(logits / passes, dim=1)
        yield from zip(batch["name"], batch["image"], probs)


def segment_split(model: DeepLab, voc: VOCRoot, split: str, out_dir: str | os.PathLike, *,
                  scales: Sequence[float] = (1.0,), flip: bool = False, msc: Sequence[float] = (),
                  crf: bool = False,
                  batch_size: int = 8, device: str | torch.device = "cpu", num_workers: int = 2,
                  crf_workers: int | None = None, crf_backend: str = "auto",
                  precision: str = "float32", progress: bool = True,
                  inputs: dict | None = None) -> dict:
    """Writes ``<out_dir>/<name>.png`` (uint8 class indices, VOC palette, at
    image resolution) for every image of ``split`` that lacks one and falls
    to this rank.

    Args:
        scales: input scale factors (the reference tests at 1.0; the
            multi-scale option is 0.5, 0.75, 1.0, 1.25, 1.5 with ``flip``).
        msc: deeplab-pytorch's test-time MSC factors (0.5, 0.75): each pass
            takes the element-wise maximum of its logits and those of its
            scaled copies; empty: none.
        crf: refine the probabilities with the dense CRF, "deeplab" preset, on
            :mod:`wsss_fast.crf`'s ``crf_backend`` (ours on ``device``, or
            pydensecrf on ``crf_workers`` processes, default every core).
        batch_size: images of one size per forward batch.
        device: torch device; "cuda" under torchrun means the rank's
            LOCAL_RANK GPU.
        precision: of the network on the CPU, "float32" or "bfloat16"
            (:func:`wsss_fast.cpu.resolve_precision`).
        inputs: e.g. {"model": final.pt}, recorded with the settings in the
            folder's provenance (:class:`wsss_fast.outputs.OutputFolder`):
            resuming with another model or other settings is refused.

    Returns:
        Summary dict: ``images`` (written by this rank), ``skipped``
        (already present), ``seconds``, ``images_per_second``.
    """
    start = time.perf_counter()
    device = local_device(device)
    out_dir = Path(out_dir)
    dataset = VOCSegmentation(voc, split, labels=False)
    recorded = {"scales": list(scales), "flip": flip, "msc": list(msc), "crf": crf, "precision": precision}
    with OutputFolder(out_dir, "infer-seg", recorded, inputs) as folder:
        pending = set(folder.pending(dataset.names, lambda name: [out_dir / f"{name}.png"]))
        todo = [i for i, name in enumerate(dataset.names) if name in pending]
        barrier()
        mine = shard_by_batch([voc.image_path(dataset.names[i]) for i in todo], batch_size, todo)
        batches = batches_by_size(image_sizes([voc.image_path(dataset.names[i]) for i in mine]), batch_size,
                                  mine)
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                            pin_memory=device.type == "cuda")
        model = prepare_model(model.to(device).eval(), precision)
        predictions = _probabilities(model, loader, scales, flip, tuple(msc), device, precision)

        def save(name: str, label) -> None:
            save_label_png(out_dir / f"{name}.png", np.asarray(label, dtype=np.uint8))

        if crf:
            from ...crf import imap_dense_crf

            names: deque[str] = deque()

            def pairs():
                for name, image, probs in predictions:
                    names.append(name)
                    yield image.permute(1, 2, 0).contiguous().numpy(), probs.cpu().numpy()

            for marginals in imap_dense_crf(pairs(), "deeplab", backend=crf_backend, device=device,
                                            workers=crf_workers, total=len(mine),
                                            progress=progress):
                save(names.popleft(), marginals.argmax(0))
        else:
            for name, _, probs in tqdm(predictions, total=len(mine), desc="infer-seg", unit="img",
                                       disable=not progress):
                save(name, probs.argmax(0).to(torch.uint8).cpu())
    seconds = time.perf_counter() - start
    return {"images": len(mine), "skipped": len(dataset) - len(todo), "rank": rank(),
            "world_size": world_size(), "seconds": seconds,
            "images_per_second": len(mine) / seconds if seconds > 0 else 0.0}
