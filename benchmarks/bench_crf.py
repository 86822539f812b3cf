"""Dense CRF per image at VOC size: pydensecrf (one process, and a pool of a
process per core) against our operator (CPU with one thread and with every
thread, CUDA with --device cuda).

Inputs: N crops of scikit-learn's sample photographs resized to 500 x 375,
with K-label score maps from smooth random logits (softmax); PSA and DeepLab
presets (10 iterations), K = 21 and 2. Every contender runs on the same N
images, one after another per setting:

* ``pydensecrf, 1 process``: wsss_fast.crf's pydensecrf backend, a loop;
* ``pydensecrf, pool``: the same on a process pool of --workers processes
  (its start-up included, as a pipeline stage pays it);
* ``wsss cpu, 1 thread``: ops.dense_crf, one image per call,
  torch.set_num_threads(1);
* ``wsss cpu, N threads, 1 image``: one image per call, the threads working
  inside the image;
* ``wsss cpu, N threads, batch``: batches of N images (one image per thread,
  what wsss_fast.crf's wsss backend does with a stream);
* ``wsss cuda, 1 image`` / ``batch of 8`` (--device cuda): inputs already on
  the GPU, synchronised.

Each record has the seconds per image, the CPU seconds used (this process and
its workers), ``cores_used`` = CPU seconds / wall seconds (below the thread or
worker count when other jobs share the cores), the load average before, and
against pydensecrf's marginals the argmax agreement and the max abs
difference (over the images pydensecrf ran on, --ref-n). Results:
benchmarks/results/crf-<device>.json.

    python benchmarks/bench_crf.py [--n 8] [--ref-n N] [--workers CORES] [--device cpu|cuda]

(``--device`` defaults to cuda on a GPU host; the pydensecrf contenders always
run on the host's cores.) A CPU run rewrites the README's table (section
crf-cpu; ``benchmarks/readme_tables.py`` redoes it from the results file).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import print_table, update_readme, write_results  # noqa: E402
from wsss_fast import ops  # noqa: E402
from wsss_fast.crf import dense_crf, dense_crf_batch  # noqa: E402
from wsss_fast.data.demo import SKLEARN_PHOTOS, load_photos  # noqa: E402

WIDTH, HEIGHT, CLASSES = 500, 375, 21


def make_inputs(n: int, seed: int = 0, classes: int = CLASSES, device: str = "cpu"
                ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """n (375, 500, 3) uint8 photo crops and n (classes, 375, 500) float32
    softmax maps (upsampled and normalised on ``device``, returned on the host)."""
    rng = np.random.default_rng(seed)
    photos = load_photos()[:len(SKLEARN_PHOTOS)]  # the two 427 x 640 colour photographs
    images, probs = [], []
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch = int(h * rng.uniform(0.6, 1.0))
        cw = min(w, int(ch * WIDTH / HEIGHT))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        images.append(np.array(Image.fromarray(photo[y:y + ch, x:x + cw]).resize((WIDTH, HEIGHT))))
        logits = torch.from_numpy(rng.normal(0, 3, (1, classes, 12, 16)).astype(np.float32))
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


def cpu_model() -> str:
    """lscpu's model name, family and model (a KVM guest may hide the name)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    get = lambda key: fields.get(key, "?").strip()  # noqa: E731
    return f"{get('Model name')} (family {get('CPU family')}, model {get('Model')})"


def ours(images: list[np.ndarray], probs: list[np.ndarray], preset: str, device: str,
         batch: int) -> list[np.ndarray]:
    out = []
    for i in range(0, len(images), batch):
        img = torch.from_numpy(np.stack(images[i:i + batch])).permute(0, 3, 1, 2).to(device)
        p = torch.from_numpy(np.stack(probs[i:i + batch])).to(device)
        q = ops.dense_crf(img, p, preset)
        if device == "cuda":
            torch.cuda.synchronize()
        out += list(q.cpu().numpy())
    return out


def with_threads(threads: int, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def readme_table(payload: dict) -> str:
    """The README's table of a CPU results file of this benchmark (markdown):
    seconds per image of each contender, and its speedup over pydensecrf in
    one process."""
    env, records = payload["environment"], payload["records"]
    methods = list(dict.fromkeys(r["method"] for r in records))
    loads = [r["load_average_before"] for r in records]
    lines = [f"{payload['cpu_model']}, {env['threads']} threads, {records[0]['images']} images of "
             f"{payload['image_size'][1]} x {payload['image_size'][0]} per setting, commit {env['commit']}, "
             f"{env['date']}; load average {min(loads):.2f}-{max(loads):.2f} before each contender, "
             f"{payload['load_average_after']:.2f} after; cores used by the threaded contenders "
             f"{min(r['cores_used'] for r in records if 'threads' in r['method'] or 'pool' in r['method']):.2f}-"
             f"{max(r['cores_used'] for r in records):.2f}.", "",
             "| preset, labels | " + " | ".join(methods) + " |", "| --- |" + " --- |" * len(methods)]
    for setting in dict.fromkeys((r["preset"], r["labels"]) for r in records):
        row = {r["method"]: r for r in records if (r["preset"], r["labels"]) == setting}
        cells = [f"{row[m]['s_per_image']:.3g} s ({row[m]['speedup_vs_pydensecrf_1_process']:.2f}x)" for m in methods]
        lines.append(f"| {setting[0]}, {setting[1]} | " + " | ".join(cells) + " |")
    ours = [r for r in records if r["method"].startswith("wsss")]
    lines += ["", f"Against pydensecrf, ours: argmax equal on at least {100 * min(r['argmax_agreement'] for r in ours):.3f}% "
              f"of the pixels, marginals within {max(r['max_abs_diff'] for r in ours):.2g}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="images per setting (default 8)")
    parser.add_argument("--ref-n", type=int, default=None,
                        help="of which pydensecrf runs on the first REF_N (default: all on cpu, "
                             "4 on cuda); parity is measured on those")
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="pool processes and threads (default: cores)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        choices=("cpu", "cuda"),
                        help="where ours runs and the maps are made (default: cuda if available)")
    args = parser.parse_args()
    threads = args.workers
    ref_n = min(args.n, args.ref_n or (args.n if args.device == "cpu" else 4))
    records = []
    for classes in (21, 2):
        images, probs = make_inputs(args.n, classes=classes, device=args.device)
        ref_images, ref_probs = images[:ref_n], probs[:ref_n]
        for preset in ("psa", "deeplab"):
            print(f"{preset}, {classes} labels ...", flush=True)
            truth, t = timed(lambda: [dense_crf(im, p, preset, backend="pydensecrf")
                                      for im, p in zip(ref_images, ref_probs)])
            runs = [("pydensecrf, 1 process", ref_n, truth, t)]
            if args.device == "cpu":
                runs.append(("pydensecrf, pool", ref_n, *timed(lambda: dense_crf_batch(
                    ref_images, ref_probs, preset, backend="pydensecrf", workers=args.workers,
                    progress=False))))
                runs.append(("wsss cpu, 1 thread", args.n, *with_threads(1, lambda: timed(
                    lambda: ours(images, probs, preset, "cpu", 1)))))
                runs.append((f"wsss cpu, {threads} threads, 1 image", args.n, *with_threads(
                    threads, lambda: timed(lambda: ours(images, probs, preset, "cpu", 1)))))
                runs.append((f"wsss cpu, {threads} threads, batch", args.n, *with_threads(
                    threads, lambda: timed(lambda: ours(images, probs, preset, "cpu", threads)))))
            else:
                ours(images[:1], probs[:1], preset, "cuda", 1)  # warm-up
                runs.append(("wsss cuda, 1 image", args.n, *timed(
                    lambda: ours(images, probs, preset, "cuda", 1))))
                runs.append(("wsss cuda, batch of 8", args.n, *timed(
                    lambda: ours(images, probs, preset, "cuda", 8))))
            for method, n, out, t in runs:
                pairs = list(zip(out, truth))
                agree = np.mean([(a.argmax(0) == b.argmax(0)).mean() for a, b in pairs])
                diff = max(float(np.abs(a - b).max()) for a, b in pairs)
                records.append({"preset": preset, "labels": classes, "method": method,
                                "images": n, **t, "s_per_image": t["seconds"] / n,
                                "argmax_agreement": agree, "max_abs_diff": diff})
            base = records[-len(runs)]["s_per_image"]
            for r in records[-len(runs):]:
                r["speedup_vs_pydensecrf_1_process"] = base / r["s_per_image"]
    print_table(records, ["preset", "labels", "method", "images", "s_per_image", "cores_used",
                          "speedup_vs_pydensecrf_1_process", "argmax_agreement", "max_abs_diff",
                          "load_average_before"])
    path = write_results("crf", args.device, records, image_size=[HEIGHT, WIDTH],
                         cpu_model=cpu_model(), load_average_after=os.getloadavg()[0],
                         workers=args.workers)
    print(f"wrote {path}")
    if args.device == "cpu":
        update_readme("crf-cpu", readme_table(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
