"""Pseudo-label generation throughput: seconds per image of each stage of
PSA's pipeline (CAM -> random walk -> dense CRF), wsss-fast's way against the
reference code's way, both measured in the same run on the same inputs.

Stages and contenders:

  cam   wsss-fast: wsss_fast.stages.cam.batch_cams on batches of ``--batch-size``
        same-sized images (every scale of a batch one forward with its
        mirrors); reference: wsss_fast.reference.cam.cam_loop, one image and
        one pass per forward (benchmarks/bench_cam.py's run_batched / run_loop).
        PSA's procedure: scales 1, 0.5, 1.5, 2 with flips (8 passes).
  rw    wsss_fast.stages.random_walk.propagate (background row, padding, pooling,
        AffinityNet forward with ops.affinity, walk, upsampling), then the
        copy to the host and the argmax label. wsss-fast: batches of
        same-sized images, sparse ops.random_walk; reference: one image at a
        time, PSA's dense walk (wsss_fast.reference.random_walk_dense: the
        N x N transition matrix squared 8 times, T^256) on the same network's
        affinities. Alpha 16, beta 8, 256 steps, radius 5. ``--dense-n`` runs
        the dense way on the first images only (it is ~4 s per image at
        PSA's 63 x 47 grid on 2 cores); its seconds per image come from those.
  crf   dense CRF, PSA preset (10 iterations), 21 labels:
        wsss_fast.crf.dense_crf_batch's pydensecrf backend on a process pool
        of ``--crf-workers`` against a serial pydensecrf loop (our operator:
        benchmarks/bench_crf.py).

Inputs: ``--n`` images, half 375 x 500 and half 500 x 375 (alternating),
labels with 1 to 3 of 20 classes; random uint8 images for the networks
(their speed does not depend on the pixels) and randomly initialised networks
of the real sizes (``--backbone``, default resnet38, for the classifier and
for AffinityNet, C = 20). The walk starts from the batched CAM stage's maps.
The CRF's cost does depend on the image (the bilateral kernel's lattice grows
with the number of distinct position-colour cells, which noise maximises), so
it runs on crops of scikit-learn's sample photographs with 21-class softmax
maps of smooth random logits (benchmarks/bench_crf.py's inputs; every other
one transposed to 500 x 375).

Timed: host-to-device copy, networks, resizing, fusion, walks, copies back to
the host (which waits for the device), argmax, the CRF (including starting
its process pool). Wall and CPU seconds (this process and its workers) are
both recorded: ``cores_used`` = CPU / wall tells contention from other jobs
(below ``--threads``) on a shared machine. The CAM and walk stages alternate
their two ways batch by batch (both ways on the first size group, then on the
next), so that such load falls on both alike. Not timed:
JPEG decoding and writing files, which the commands overlap with the work
(DataLoader workers, writer threads), and building the networks. Warm-up:
each network runs once on a small batch before timing (threads, lazy
initialisation); on CUDA each way also runs once on one image of each size
(per-shape kernel selection). Totals add the three stages' seconds per image.
The walks' times do not depend on the affinities' values (checked: the
random network's near-zero affinities and PSA-like ones, aff^8 uniform in
[0, 1), take the same time both ways).

    python benchmarks/bench_pipeline.py --n 4 --threads 2 [--dense-n 2] [--device cuda]
    python benchmarks/bench_pipeline.py --n 2 --small --backbone scratch --option width=4 --no-write
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import bench_cam, bench_crf  # noqa: E402
from benchmarks.common import print_table, write_results  # noqa: E402
from wsss_fast import ops, reference  # noqa: E402
from wsss_fast.stages.cam import resolve_settings  # noqa: E402
from wsss_fast.crf import dense_crf, dense_crf_batch  # noqa: E402
from wsss_fast.inference import batches_by_size  # noqa: E402
from wsss_fast.models import Classifier, build_backbone  # noqa: E402
from wsss_fast.models.affinity_net import AffinityNet, default_head_norm  # noqa: E402
from wsss_fast.stages.random_walk import WalkSettings, propagate  # noqa: E402

SMALL_SIZES = [(48, 64), (64, 48)]


def walk_inputs(inputs, cams) -> list[tuple[torch.Tensor, np.ndarray, torch.Tensor]]:
    """Per image (uint8 (3, H, W) image, keys (K,) 1..20, (K, H, W) CAMs)."""
    return [(image, label.nonzero()[:, 0].numpy() + 1, torch.from_numpy(maps))
            for (image, label), maps in zip(inputs, cams)]


def run_walk(model, items, settings, device, batch_size, walk) -> list[tuple[np.ndarray, np.ndarray]]:
    """(propagated maps (K + 1, H, W), uint8 label) per image, as rw_stage's
    walk_images makes them: same-sized images in batches of ``batch_size``."""
    out: list = [None] * len(items)
    for batch in batches_by_size([tuple(image.shape[1:]) for image, _, _ in items], batch_size):
        k = max(len(items[i][1]) for i in batch)
        h, w = items[batch[0]][0].shape[1:]
        cams = torch.zeros(len(batch), k, h, w)
        for j, i in enumerate(batch):
            cams[j, :len(items[i][1])] = items[i][2]
        images = torch.stack([items[i][0] for i in batch]).to(device, non_blocking=True)
        scores = propagate(model, images, cams.to(device), settings, walk=walk).cpu().numpy()
        for i, s in zip(batch, scores):
            keys = np.concatenate([[0], items[i][1]])
            s = s[:len(keys)]
            out[i] = s, keys[s.argmax(0)].astype(np.uint8)
    return out


def crf_inputs(sizes: list[tuple[int, int]], n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """bench_crf's photo crops and 21-class maps, transposed to portrait where
    the size asks for it and cropped to it (no-op at VOC sizes)."""
    images, probs = bench_crf.make_inputs(n)
    for i, (h, w) in enumerate(sizes[i % len(sizes)] for i in range(n)):
        if h > w:
            images[i], probs[i] = images[i].transpose(1, 0, 2), probs[i].transpose(0, 2, 1)
        images[i] = np.ascontiguousarray(images[i][:h, :w])
        probs[i] = np.ascontiguousarray(probs[i][:, :h, :w])
    return images, probs


def alternate(batches: list[list[int]], ways: list[Callable[[list[int]], list]], *,
              only: dict[int, Sequence[int]] | None = None) -> list[tuple[dict[int, object], dict]]:
    """Runs every way on the first batch, then every way on the second, ...,
    so that load from other jobs on a shared machine falls on all alike.

    Args:
        batches: lists of image indices.
        ways: fn(indices) -> one output per index.
        only: way number -> the indices it runs on (default: all).

    Returns:
        per way ({index: output}, {"seconds", "cpu_seconds", "cores_used"}),
        the times summed over the batches (wall and CPU seconds of this
        process and its finished child processes).
    """
    results = [({}, {"seconds": 0.0, "cpu_seconds": 0.0}) for _ in ways]
    for batch in batches:
        for k, (way, (outputs, timing)) in enumerate(zip(ways, results)):
            indices = [i for i in batch if only is None or k not in only or i in only[k]]
            if indices:
                out, t = bench_crf.timed(lambda: way(indices))
                outputs.update(zip(indices, out))
                timing["seconds"] += t["seconds"]
                timing["cpu_seconds"] += t["cpu_seconds"]
    for _, timing in results:
        timing["cores_used"] = timing["cpu_seconds"] / timing["seconds"]
    return results


def stage_records(stage: str, fast: dict, ref: dict) -> list[dict]:
    """The two records of a stage; ``speedup`` = reference seconds per image /
    the record's seconds per image."""
    records = [{"stage": stage, "way": "wsss-fast", **fast}, {"stage": stage, "way": "reference", **ref}]
    for r in records:
        r["seconds_per_image"] = r["seconds"] / r["images"]
        r["images_per_second"] = r["images"] / r["seconds"]
    for r in records:
        r["speedup"] = records[1]["seconds_per_image"] / r["seconds_per_image"]
    return records


def total_records(records: list[dict]) -> list[dict]:
    """Per way, the stages' seconds per image added up."""
    spi = {way: sum(r["seconds_per_image"] for r in records if r["way"] == way)
           for way in ("wsss-fast", "reference")}
    return [{"stage": "total", "way": way, "method": "cam + rw + crf", "seconds_per_image": s,
             "images_per_second": 1 / s, "speedup": spi["reference"] / s} for way, s in spi.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4, help="images (default 4)")
    parser.add_argument("--dense-n", type=int,
                        help="images for the reference (dense) walk, the first ones (default: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--crf-workers", type=int, default=os.cpu_count(),
                        help="processes of the CRF pool (default: cores)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch (default 8)")
    parser.add_argument("--backbone", default="resnet38", help="registry name (default resnet38)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="backbone option (repeatable; VALUE read as JSON when it parses)")
    parser.add_argument("--small", action="store_true", help="64 x 48 images instead of VOC's (smoke test)")
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/")
    args = parser.parse_args()
    dense_n = args.n if args.dense_n is None else args.dense_n
    if args.n < 1 or not 1 <= dense_n <= args.n:
        parser.error(f"need --n >= 1 and 1 <= --dense-n <= --n, got --n {args.n} --dense-n {dense_n}")
    if args.threads:
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    device = torch.device(args.device)
    options = bench_cam.parse_options(args.option)
    sizes = SMALL_SIZES if args.small else bench_cam.VOC_SIZES
    inputs = bench_cam.make_inputs(args.n, sizes)
    torch.manual_seed(0)
    classifier = Classifier(build_backbone(args.backbone, None, **options),
                            bench_cam.NUM_CLASSES).to(device).eval()
    aff_net = AffinityNet(build_backbone(args.backbone, None, **options), radius=5,
                          head_norm=default_head_norm(args.backbone)).to(device).eval()
    with torch.no_grad():
        tiny = torch.zeros(2, 3, 48, 64, device=device)
        classifier.class_maps(tiny)
        aff_net(tiny)
    warm = inputs[:len(sizes)] if device.type == "cuda" else []
    cam_settings = resolve_settings("psa")
    walk_settings = WalkSettings()
    records = []

    batches = batches_by_size([tuple(image.shape[1:]) for image, _ in inputs], args.batch_size)

    print(f"cam: {args.n} images, batched and one at a time ...", flush=True)
    bench_cam.run_batched(classifier, warm, cam_settings, device, args.batch_size, False)
    bench_cam.run_loop(classifier, warm, cam_settings, device)
    (cams, fast_t), (loop, ref_t) = alternate(batches, [
        lambda idx: bench_cam.run_batched(classifier, [inputs[i] for i in idx], cam_settings, device,
                                          args.batch_size, False),
        lambda idx: bench_cam.run_loop(classifier, [inputs[i] for i in idx], cam_settings, device)])
    cam_diff = max(float(np.abs(cams[i] - loop[i]).max()) for i in cams)
    records += stage_records(
        "cam", {"method": f"batch_cams, batches of {args.batch_size}", "images": args.n, **fast_t,
                "max_abs_diff": cam_diff},
        {"method": "cam_loop, one image per forward", "images": args.n, **ref_t})

    print(f"rw: {args.n} images sparse, {dense_n} dense ...", flush=True)
    items = walk_inputs(inputs, [cams[i] for i in range(args.n)])
    run_walk(aff_net, items[:len(warm)], walk_settings, device, args.batch_size, ops.random_walk)
    run_walk(aff_net, items[:len(warm)], walk_settings, device, 1, reference.random_walk_dense)
    (sparse, fast_t), (dense, ref_t) = alternate(batches, [
        lambda idx: run_walk(aff_net, [items[i] for i in idx], walk_settings, device, args.batch_size,
                             ops.random_walk),
        lambda idx: run_walk(aff_net, [items[i] for i in idx], walk_settings, device, 1,
                             reference.random_walk_dense)], only={1: range(dense_n)})
    rw_diff = max(float(np.abs(sparse[i][0] - dense[i][0]).max()) for i in dense)
    same_labels = float(np.mean([(sparse[i][1] == dense[i][1]).mean() for i in dense]))
    records += stage_records(
        "rw", {"method": f"sparse ops.random_walk, batches of {args.batch_size}", "images": args.n,
               **fast_t, "max_abs_diff_vs_dense": rw_diff, "label_agreement_vs_dense": same_labels},
        {"method": "dense T^256 (PSA), one image at a time", "images": dense_n, **ref_t})

    print(f"crf: {args.n} images, pool of {args.crf_workers} and serial ...", flush=True)
    crf_images, crf_probs = crf_inputs(sizes, args.n)
    pooled, fast_t = bench_crf.timed(lambda: dense_crf_batch(crf_images, crf_probs, "psa",
                                                             backend="pydensecrf",
                                                             workers=args.crf_workers, progress=False))
    serial, ref_t = bench_crf.timed(lambda: [dense_crf(im, p, "psa", backend="pydensecrf")
                                             for im, p in zip(crf_images, crf_probs)])
    identical = all(np.array_equal(a, b) for a, b in zip(pooled, serial))
    records += stage_records(
        "crf", {"method": f"dense_crf_batch, {args.crf_workers} processes", "images": args.n, **fast_t,
                "outputs_identical": identical},
        {"method": "dense_crf loop, 1 process", "images": args.n, **ref_t})

    records += total_records(records)
    print_table(records, ["stage", "way", "method", "images", "seconds_per_image", "images_per_second",
                          "speedup", "cores_used"])
    print(f"cam max |batched - loop| {cam_diff:.2g}; rw (first {dense_n} images) max |sparse - dense| "
          f"{rw_diff:.2g}, labels agree on {100 * same_labels:.4g}% of pixels; "
          f"crf outputs identical: {identical}")
    if not args.no_write:
        path = write_results("pipeline", device, records, backbone=args.backbone, backbone_options=options,
                             image_sizes=sizes, num_classes=bench_cam.NUM_CLASSES, cam_preset="psa",
                             walk=vars(walk_settings) | {"radius": 5}, dense_n=dense_n,
                             crf_preset="psa", crf_labels=bench_crf.CLASSES, crf_workers=args.crf_workers,
                             load_average_before_after=[load_before, os.getloadavg()])
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
