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
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (RESULTS_DIR, cpu_description, print_table, sync, update_readme,  # noqa: E402
                               uptime, write_results)
from wsss_fast import cpu  # noqa: E402
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


def run_batched(model, inputs, settings, device, batch_size, amp, precision="float32") -> list[np.ndarray]:
    """make-cam's engine: same-sized images in batches of ``batch_size``
    (``model`` laid out for ``precision`` by wsss_fast.cpu.prepare_model)."""
    out: list = [None] * len(inputs)
    batches = batches_by_size([tuple(image.shape[1:]) for image, _ in inputs], batch_size)
    for batch in batches:
        images = torch.stack([inputs[i][0] for i in batch]).to(device, non_blocking=True)
        labels = torch.stack([inputs[i][1] for i in batch])
        for i, (_, maps) in zip(batch, batch_cams(model, images, labels, settings, amp=amp,
                                                  precision=precision)):
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


def readme_table(payloads: list[dict]) -> str:
    """The README's table of this benchmark's CPU results files (markdown):
    per backbone and preset, images per second of each engine contender and
    of the loop."""
    lines = ["| backbone, preset | contender | img/s | one-image loop img/s | ratio | max difference |",
             "| --- | --- | --- | --- | --- | --- |"]
    notes = []
    for payload in payloads:
        env = payload["environment"]
        notes.append(f"{payload['backbone']}: {env['device']}, {env['threads']} threads, {payload['images']} "
                     f"images, commit {env['commit']}, {env['date']}, load before {payload['uptime_before_after'][0]}"
                     f", after {payload['uptime_before_after'][1]}")
        for preset in dict.fromkeys(r["preset"] for r in payload["records"]):
            rows = [r for r in payload["records"] if r["preset"] == preset]
            loop = next(r for r in rows if r["batch_size"] == 1)
            for r in rows:
                if r is not loop:
                    lines.append(f"| {payload['backbone']}, {preset} | {r['method']} | {r['images_per_second']:.3g} | "
                                 f"{loop['images_per_second']:.3g} | {r['speedup']:.2f}x | {r['max_abs_diff']:.2g} |")
    return "\n".join(lines + [""] + [f"- {note}" for note in notes])


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
    parser.add_argument("--cpu-precision", choices=cpu.PRECISIONS, default="auto",
                        help="also time the engine in bfloat16 where this resolves to it on the CPU "
                             "(default auto: where the CPU has native bfloat16)")
    parser.add_argument("--glibc-default", action="store_true",
                        help="leave glibc's allocator as it is (freed blocks above its mmap threshold go "
                             "back to the kernel), instead of wsss_fast.cpu.retain_freed_memory as the "
                             "command line does")
    parser.add_argument("--small", action="store_true", help="64 x 48 images instead of VOC's (smoke test)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-write", action="store_true",
                        help="do not write benchmarks/results/ (nor the README's table)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    retained = not args.glibc_default and cpu.retain_freed_memory()

    before = uptime()
    device = torch.device(args.device)
    if args.amp is None:
        args.amp = device.type == "cuda"
    options = parse_options(args.option)
    torch.manual_seed(0)
    model = Classifier(build_backbone(args.backbone, None, **options), NUM_CLASSES).to(device).eval()
    precision = cpu.resolve_precision(args.cpu_precision, device.type)
    models = {"float32": model}
    if precision == "bfloat16":
        models["bfloat16"] = cpu.prepare_model(copy.deepcopy(model), precision)
    contenders = ([("batched", False, "float32")] + [("batched bfloat16", False, "bfloat16")] * (precision == "bfloat16")
                  + [("batched amp", True, "float32")] * args.amp)
    sizes = [(48, 64), (64, 48)] if args.small else VOC_SIZES
    inputs = make_inputs(args.n, sizes)
    warm = inputs[:2 * args.batch_size]
    records = []
    for preset in args.preset:
        settings = resolve_settings(preset, sizes=(32, 48) if args.small and preset == "drs" else None)
        run_loop(model, inputs[:2], settings, device)  # warm-up: kernels, allocator, every input size
        loop, loop_s = timed(lambda: run_loop(model, inputs, settings, device), device)
        records.append({"preset": preset, "method": "loop (reference)", "batch_size": 1, "images": args.n,
                        "seconds": loop_s, "images_per_second": args.n / loop_s, "speedup": 1.0,
                        "max_abs_diff": 0.0})
        for name, amp, dtype in contenders:
            run_batched(models[dtype], warm, settings, device, args.batch_size, amp, dtype)
            out, seconds = timed(lambda: run_batched(models[dtype], inputs, settings, device, args.batch_size,
                                                     amp, dtype), device)
            diff = max(float(np.abs(a - b).max()) if a.size else 0.0 for a, b in zip(out, loop))
            records.append({"preset": preset, "method": name, "batch_size": args.batch_size, "images": args.n,
                            "seconds": seconds, "images_per_second": args.n / seconds,
                            "speedup": loop_s / seconds, "max_abs_diff": diff})
    print_table(records, ["preset", "method", "batch_size", "images", "seconds", "images_per_second",
                          "speedup", "max_abs_diff"])
    if not args.no_write:
        path = write_results(f"cam-{args.backbone}", device, records, backbone=args.backbone,
                             backbone_options=options, image_sizes=sizes, images=args.n, num_classes=NUM_CLASSES,
                             retain_freed_memory=retained, cpu=cpu_description(),
                             uptime_before_after=[before, uptime()])
        print(f"wrote {path}")
        if device.type == "cpu" and not args.small:
            files = sorted(RESULTS_DIR.glob("cam-*-cpu.json"))
            update_readme("cam-cpu", readme_table([json.loads(f.read_text()) for f in files]))


if __name__ == "__main__":
    main()
