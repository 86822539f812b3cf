"""Dense CRF over many VOC-sized images: wsss_fast.crf.dense_crf_batch (a
process per core) against the reference code's one-image-at-a-time loop.

Inputs: N crops of scikit-learn's sample photographs resized to 500 x 375,
with 21-class score maps from smooth random logits (softmax), PSA preset (10
iterations). Both contenders run once on the same inputs (each takes about
half a second per image per core); the outputs are checked to be identical.

Besides wall time, each record has the CPU seconds used (this process and its
workers) and ``cores_used`` = CPU seconds / wall seconds: on a machine shared
with other jobs, a speedup below the worker count shows up as cores_used
below it, which tells contention from a serial bottleneck.

The CRF is CPU code (pydensecrf) in every contender. ``--device cuda`` (the
default on a GPU host) measures it where the pipeline runs it there: the
softmax maps come from the GPU (computed and copied back to the host, not
timed) and the process pool uses the host's cores; the results file is then
crf-cuda.json, its environment naming the GPU and the core count.

    python benchmarks/bench_crf.py [--n 64] [--workers CORES] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import print_table, write_results  # noqa: E402
from wsss_fast.crf import dense_crf, dense_crf_batch  # noqa: E402
from wsss_fast.data.demo import load_photos  # noqa: E402

WIDTH, HEIGHT, CLASSES = 500, 375, 21


def make_inputs(n: int, seed: int = 0,
                device: str = "cpu") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """n (375, 500, 3) uint8 photo crops and n (21, 375, 500) float32 softmax maps
    (upsampled and normalised on `device`, returned on the host)."""
    rng = np.random.default_rng(seed)
    photos = load_photos()
    images, probs = [], []
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch = int(h * rng.uniform(0.6, 1.0))
        cw = min(w, int(ch * WIDTH / HEIGHT))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        images.append(np.array(Image.fromarray(photo[y:y + ch, x:x + cw]).resize((WIDTH, HEIGHT))))
        logits = torch.from_numpy(rng.normal(0, 3, (1, CLASSES, 12, 16)).astype(np.float32))
        logits = torch.nn.functional.interpolate(logits.to(device), size=(HEIGHT, WIDTH),
                                                 mode="bilinear")
        probs.append(torch.softmax(logits[0], dim=0).cpu().numpy())
    return images, probs


def cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn) -> tuple[object, dict]:
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), cpu_seconds()
    out = fn()
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    return out, {"seconds": wall, "cpu_seconds": cpu, "cores_used": cpu / wall,
                 "load_average_before": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="images (default 64)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="processes (default: cores)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the score maps are made (the CRF runs on the CPU)")
    args = parser.parse_args()
    images, probs = make_inputs(args.n, device=args.device)

    loop, loop_time = timed(lambda: [dense_crf(image, p, "psa") for image, p in zip(images, probs)])
    batch, batch_time = timed(lambda: dense_crf_batch(images, probs, "psa", workers=args.workers,
                                                      progress=False))
    identical = all(np.array_equal(a, b) for a, b in zip(loop, batch))
    records = [
        {"method": "loop (one at a time, 1 process)", "workers": 1, "images": args.n,
         **loop_time, "ms_per_image": 1e3 * loop_time["seconds"] / args.n},
        {"method": "dense_crf_batch", "workers": args.workers, "images": args.n,
         **batch_time, "ms_per_image": 1e3 * batch_time["seconds"] / args.n},
    ]
    print_table(records, ["method", "workers", "images", "seconds", "ms_per_image", "cpu_seconds",
                          "cores_used", "load_average_before"])
    speedup = loop_time["seconds"] / batch_time["seconds"]
    print(f"speedup {speedup:.2f}x on {args.workers} workers ({os.cpu_count()} cores); "
          f"outputs identical: {identical}")
    path = write_results("crf", args.device, records, speedup=speedup, outputs_identical=identical,
                         image_size=[HEIGHT, WIDTH], num_classes=CLASSES, preset="psa")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
