"""CAM inference throughput in images per second: the batched engine
(wsss_fast.stages.cam.batch_cams on groups of same-sized images) against the
reference code's loop (one image and one pass per forward, accumulated in
numpy: wsss_fast.reference.cam.cam_loop).

Inputs: VOC-sized random images, half 500 x 375 and half 375 x 500 (the
two commonest VOC sizes), each with 1 to 3 of 20 classes in its label; the
backbone is randomly initialised (speed does not depend on the weights).
Both procedures are measured: psa (scales 1, 0.5, 1.5, 2 with flips, 8
passes) and drs (256, 320, 384 squares, 3 passes). Timed: host-to-device
copy, network, resizing, fusion, normalisation and the copy of each image's
maps back to the host; not timed: JPEG decoding and writing files, which
make-cam overlaps with the network (DataLoader workers, writer threads).
Results: benchmarks/results/cam-<backbone>-<cpu|cuda>.json (one file per backbone).
Each record also gives the largest difference between the two outputs.

    python benchmarks/bench_cam.py --backbone vgg16_d1 --device cuda [--n 64] [--batch-size 8] [--no-amp]
    python benchmarks/bench_cam.py --backbone scratch --option width=4 --n 8 --small --threads 1 --no-write
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import print_table, sync, write_results  # noqa: E402
from wsss_fast.stages.cam import batch_cams, resolve_settings  # noqa: E402
from wsss_fast.inference import batches_by_size  # noqa: E402
from wsss_fast.models import Classifier, build_backbone  # noqa: E402
from wsss_fast.reference.cam import cam_loop  # noqa: E402
from wsss_fast.transforms import normalize  # noqa: E402

NUM_CLASSES = 20
VOC_SIZES = [(375, 500), (500, 375)]


def make_inputs(n: int, sizes: list[tuple[int, int]],
                seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n (uint8 (3, H, W) image, (20,) multi-hot label) pairs, sizes alternating."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        height, width = sizes[i % len(sizes)]
        label = torch.zeros(NUM_CLASSES)
        label[torch.randperm(NUM_CLASSES, generator=gen)[:int(torch.randint(1, 4, (), generator=gen))]] = 1
        out.append((torch.randint(0, 256, (3, height, width), generator=gen, dtype=torch.uint8), label))
    return out


def run_loop(model, inputs, settings, device) -> list[np.ndarray]:
    """The reference way: every image alone, every pass its own forward."""
    return [cam_loop(model.class_maps, normalize(image.to(device)), label, settings)[label.bool().numpy()]
            for image, label in inputs]


def run_batched(model, inputs, settings, device, batch_size, amp) -> list[np.ndarray]:
    """make-cam's engine: same-sized images in batches of ``batch_size``."""
    out: list = [None] * len(inputs)
    batches = batches_by_size([tuple(image.shape[1:]) for image, _ in inputs], batch_size)
    for batch in batches:
        images = torch.stack([inputs[i][0] for i in batch]).to(device, non_blocking=True)
        labels = torch.stack([inputs[i][1] for i in batch])
        for i, (_, maps) in zip(batch, batch_cams(model, images, labels, settings, amp=amp)):
            out[i] = maps
    return out


def timed(fn, device) -> tuple[object, float]:
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - start


def parse_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vgg16_d1", help="registry name (default vgg16_d1)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="backbone option (repeatable; VALUE read as JSON when it parses)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n", type=int, default=32, help="images (default 32)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch (default 8)")
    parser.add_argument("--preset", nargs="+", choices=("psa", "drs"), default=["psa", "drs"])
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="also time the engine with float16 autocast (default: on CUDA)")
    parser.add_argument("--small", action="store_true", help="64 x 48 images instead of VOC's (smoke test)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    if args.amp is None:
        args.amp = device.type == "cuda"
    options = parse_options(args.option)
    torch.manual_seed(0)
    model = Classifier(build_backbone(args.backbone, None, **options), NUM_CLASSES).to(device).eval()
    sizes = [(48, 64), (64, 48)] if args.small else VOC_SIZES
    inputs = make_inputs(args.n, sizes)
    records = []
    for preset in args.preset:
        settings = resolve_settings(preset, sizes=(32, 48) if args.small and preset == "drs" else None)
        run_loop(model, inputs[:2], settings, device)  # warm-up: kernels, allocator, every input size
        run_batched(model, inputs[:2 * args.batch_size], settings, device, args.batch_size, False)
        loop, loop_s = timed(lambda: run_loop(model, inputs, settings, device), device)
        contenders = [("batched", False)] + ([("batched amp", True)] if args.amp else [])
        records.append({"preset": preset, "method": "loop (reference)", "batch_size": 1, "images": args.n,
                        "seconds": loop_s, "images_per_second": args.n / loop_s, "speedup": 1.0,
                        "max_abs_diff": 0.0})
        for name, amp in contenders:
            if amp:
                run_batched(model, inputs[:2 * args.batch_size], settings, device, args.batch_size, True)
            out, seconds = timed(lambda: run_batched(model, inputs, settings, device, args.batch_size, amp),
                                 device)
            diff = max(float(np.abs(a - b).max()) if a.size else 0.0 for a, b in zip(out, loop))
            records.append({"preset": preset, "method": name, "batch_size": args.batch_size, "images": args.n,
                            "seconds": seconds, "images_per_second": args.n / seconds,
                            "speedup": loop_s / seconds, "max_abs_diff": diff})
    print_table(records, ["preset", "method", "batch_size", "images", "seconds", "images_per_second",
                          "speedup", "max_abs_diff"])
    if not args.no_write:
        path = write_results(f"cam-{args.backbone}", device, records, backbone=args.backbone,
                             backbone_options=options, image_sizes=sizes, num_classes=NUM_CLASSES)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
