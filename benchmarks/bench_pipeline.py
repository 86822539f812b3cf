"""Pseudo-label generation throughput: seconds per image of PSA's pipeline
(CAM -> random walk -> dense CRF), wsss-fast's way against the reference
code's way, both in the same run on the same inputs.

Each way runs in its own worker process, started for this run, so that each
has the process settings it would have on its own:

  wsss-fast  the command line's settings (wsss_fast.cpu): OMP_WAIT_POLICY=PASSIVE
             before torch loads, torch threads from the available cores, freed
             memory kept for reuse; the networks in ``--cpu-precision`` (auto:
             bfloat16 autocast with channels_last where the CPU has native
             bfloat16, float32 elsewhere).
  reference  torch's defaults, as the reference scripts run; float32.

Stages:

  cam   wsss-fast: wsss_fast.stages.cam.batch_cams on batches of ``--batch-size``
        same-sized images (every scale of a batch one forward with its
        mirrors); reference: wsss_fast.reference.cam.cam_loop, one image and
        one pass per forward (benchmarks/bench_cam.py's run_batched / run_loop).
        PSA's procedure: scales 1, 0.5, 1.5, 2 with flips (8 passes).
  rw    wsss_fast.stages.random_walk.propagate (background row, padding, pooling,
        AffinityNet forward with ops.affinity, walk, upsampling), then the
        copy to the host and the argmax label, each way from its own CAMs.
        wsss-fast: batches of same-sized images, sparse ops.random_walk;
        reference: one image at a time, PSA's dense walk
        (wsss_fast.reference.random_walk_dense: the N x N transition matrix
        squared 8 times, T^256) in float32. Alpha 16, beta 8, 256 steps,
        radius 5. ``--dense-n`` runs the reference walk on the first images
        only (~4 s per image at PSA's 63 x 47 grid on 2 cores); its seconds
        per image come from those, and so does the label agreement.
  crf   dense CRF, PSA preset (10 iterations), 21 labels:
        wsss_fast.crf.dense_crf_batch on the backend the commands pick by
        default ("auto": our operator where its kernel is compiled, else
        pydensecrf on a process pool of ``--crf-workers``) against a serial
        pydensecrf loop (per-backend figures: benchmarks/bench_crf.py).

Inputs: ``--n`` images, half 375 x 500 and half 500 x 375 (alternating),
labels with 1 to 3 of 20 classes; random uint8 images for the networks
(their speed does not depend on the pixels) and randomly initialised networks
of the real sizes (``--backbone``, default resnet38, for the classifier and
for AffinityNet, C = 20), identical in both workers (same seeds). The CRF's
cost does depend on the image (the bilateral kernel's lattice grows with the
number of distinct position-colour cells, which noise maximises), so it runs
on crops of scikit-learn's sample photographs with 21-class softmax maps of
smooth random logits (benchmarks/bench_crf.py's inputs; every other one
transposed to 500 x 375).

Timed inside each worker: host-to-device copy, networks, resizing, fusion,
walks, copies back to the host (which waits for the device), argmax, the CRF
(including starting its process pool). Wall and CPU seconds (the worker and
its finished child processes) are both recorded: ``cores_used`` = CPU / wall
tells contention from other jobs on a shared machine. The CAM and walk stages
alternate the two ways batch by batch (both ways on the first size group,
then on the next), so that such load falls on both alike; the load average
and ``uptime`` before and after the run are recorded with the CPU's model and
flags. Not timed: JPEG decoding and writing files, which the commands overlap
with the work (DataLoader workers, writer threads), and building the
networks. Warm-up: each way runs its networks once on a small batch, and its
CAM and walk procedures once on one image of each size, before timing.
Totals add the three stages' seconds per image.

Outputs compared: CAMs (largest difference), label maps after the walk
(share of equal pixels), CRF marginals (largest difference, share of equal
argmax). With float32 on both sides the walk's labels are identical; with
bfloat16 the difference is what bfloat16 changes.

    python benchmarks/bench_pipeline.py --n 4 [--dense-n 2] [--cpu-precision auto] [--device cuda]
    python benchmarks/bench_pipeline.py --n 2 --small --backbone scratch --option width=4 --no-write
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import bench_cam, bench_crf  # noqa: E402
from benchmarks.common import (cpu_description, print_table, sync, update_readme, uptime,  # noqa: E402
                               write_results)
from wsss_fast import cpu, ops, reference  # noqa: E402
from wsss_fast.stages.cam import resolve_settings  # noqa: E402
from wsss_fast.crf import dense_crf, dense_crf_batch, resolve_backend  # noqa: E402
from wsss_fast.inference import batches_by_size  # noqa: E402
from wsss_fast.models import Classifier, build_backbone  # noqa: E402
from wsss_fast.models.affinity_net import AffinityNet, default_head_norm  # noqa: E402
from wsss_fast.stages.random_walk import WalkSettings, propagate  # noqa: E402

SMALL_SIZES = [(48, 64), (64, 48)]
WAYS = ("wsss-fast", "reference")


def walk_inputs(inputs, cams) -> list[tuple[torch.Tensor, np.ndarray, torch.Tensor]]:
    """Per image (uint8 (3, H, W) image, keys (K,) 1..20, (K, H, W) CAMs)."""
    return [(image, label.nonzero()[:, 0].numpy() + 1, torch.from_numpy(maps))
            for (image, label), maps in zip(inputs, cams)]


def run_walk(model, items, settings, device, batch_size, walk,
             precision: str = "float32") -> list[tuple[np.ndarray, np.ndarray]]:
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
        scores = propagate(model, images, cams.to(device), settings, walk=walk,
                           precision=precision).cpu().numpy()
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


class Way:
    """One way's networks, inputs and procedures, inside its worker process.

    Args:
        name: "wsss-fast" or "reference".
        options: the benchmark's arguments (a dict of its flags).
    """

    def __init__(self, name: str, options: dict):
        self.name, self.o = name, options
        self.device = torch.device(options["device"])
        fast = name == "wsss-fast"
        if options["threads"] or fast:
            torch.set_num_threads(options["threads"] or cpu.compute_threads())
        self.precision = cpu.resolve_precision(options["cpu_precision"], self.device.type) if fast else "float32"
        self.settings = {"threads": torch.get_num_threads(), "precision": self.precision,
                         "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (libgomp: spin, then sleep)"),
                         "retain_freed_memory": fast and cpu.retain_freed_memory(),
                         "crf_backend": resolve_backend("auto", self.device) if fast else "pydensecrf"}
        sizes = SMALL_SIZES if options["small"] else bench_cam.VOC_SIZES
        self.inputs = bench_cam.make_inputs(options["n"], sizes)
        backbone_options = bench_cam.parse_options(options["option"])
        torch.manual_seed(0)
        classifier = Classifier(build_backbone(options["backbone"], None, **backbone_options),
                                bench_cam.NUM_CLASSES).to(self.device).eval()
        aff_net = AffinityNet(build_backbone(options["backbone"], None, **backbone_options), radius=5,
                              head_norm=default_head_norm(options["backbone"])).to(self.device).eval()
        self.classifier = cpu.prepare_model(classifier, self.precision)
        self.aff_net = cpu.prepare_model(aff_net, self.precision)
        self.cam_settings = resolve_settings("psa")
        self.walk_settings = WalkSettings()
        self.cams: dict[int, np.ndarray] = {}
        self.crf = crf_inputs(sizes, options["n"])
        # warm-up: threads, lazy initialisation, the allocator's heap (a batch's worth on the
        # CPU: the first size group; on CUDA per-shape kernel selection: every size)
        batches = batches_by_size([tuple(image.shape[1:]) for image, _ in self.inputs], options["batch_size"])
        warm = batches[0] if self.device.type == "cpu" else [batch[0] for batch in batches]
        warm = warm if fast else warm[:1] if self.device.type == "cpu" else warm
        self.cam(warm)
        self.rw(warm)
        self.cams.clear()

    def cam(self, indices: list[int]) -> dict[int, np.ndarray]:
        images = [self.inputs[i] for i in indices]
        if self.name == "wsss-fast":
            out = bench_cam.run_batched(self.classifier, images, self.cam_settings, self.device,
                                        self.o["batch_size"], False, self.precision)
        else:
            out = bench_cam.run_loop(self.classifier, images, self.cam_settings, self.device)
        self.cams.update(zip(indices, out))
        return dict(zip(indices, out))

    def rw(self, indices: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        items = walk_inputs([self.inputs[i] for i in indices], [self.cams[i] for i in indices])
        if self.name == "wsss-fast":
            out = run_walk(self.aff_net, items, self.walk_settings, self.device, self.o["batch_size"],
                           ops.random_walk, self.precision)
        else:
            out = run_walk(self.aff_net, items, self.walk_settings, self.device, 1, reference.random_walk_dense)
        return dict(zip(indices, out))

    def crf_all(self, _=None) -> list[np.ndarray]:
        images, probs = self.crf
        if self.name == "wsss-fast":
            return dense_crf_batch(images, probs, "psa", backend=self.settings["crf_backend"],
                                   device=self.device, workers=self.o["crf_workers"], progress=False)
        return [dense_crf(image, p, "psa", backend="pydensecrf") for image, p in zip(images, probs)]


def _serve(conn, name: str, options: dict) -> None:
    """A worker: builds its :class:`Way`, then answers (method, argument)
    requests with (result, timing) until it receives None."""
    way = Way(name, options)
    conn.send(way.settings)
    while (request := conn.recv()) is not None:
        method, argument = request

        def call():
            result = getattr(way, method)(argument)
            sync(way.device)
            return result

        sync(way.device)
        conn.send(bench_crf.timed(call))


class Worker:
    """A :class:`Way` in a spawned process with the environment it runs in:
    wsss-fast's OpenMP setting (:func:`wsss_fast.cpu.prepare_environment`) or
    the parent's environment as it is (the reference)."""

    def __init__(self, name: str, options: dict):
        saved = dict(os.environ)
        if name == "wsss-fast":
            cpu.prepare_environment()
        try:
            context = multiprocessing.get_context("spawn")
            self.conn, child = context.Pipe()
            self.process = context.Process(target=_serve, args=(child, name, options))
            self.process.start()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        self.name = name
        self.settings = self._receive()

    def _receive(self):
        try:
            return self.conn.recv()
        except EOFError:
            raise SystemExit(f"the {self.name} worker ended (its traceback is above)") from None

    def __call__(self, method: str, argument=None):
        self.conn.send((method, argument))
        return self._receive()

    def close(self) -> None:
        self.conn.send(None)
        self.process.join()


def alternate(batches: list[list[int]], calls: list[Callable[[list[int]], tuple[dict, dict]]], *,
              only: dict[int, Sequence[int]] | None = None) -> list[tuple[dict[int, object], dict]]:
    """Runs every way on the first batch, then every way on the second, ...,
    so that load from other jobs on a shared machine falls on all alike.

    Args:
        batches: lists of image indices.
        calls: fn(indices) -> ({index: output}, timing of the call).
        only: way number -> the indices it runs on (default: all).

    Returns:
        per way ({index: output}, {"seconds", "cpu_seconds", "cores_used"}),
        the times summed over the batches.
    """
    results = [({}, {"seconds": 0.0, "cpu_seconds": 0.0}) for _ in calls]
    for batch in batches:
        for k, (call, (outputs, timing)) in enumerate(zip(calls, results)):
            indices = [i for i in batch if only is None or k not in only or i in only[k]]
            if indices:
                out, t = call(indices)
                outputs.update(out)
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
    spi = {way: sum(r["seconds_per_image"] for r in records if r["way"] == way) for way in WAYS}
    return [{"stage": "total", "way": way, "method": "cam + rw + crf", "seconds_per_image": s,
             "images_per_second": 1 / s, "speedup": spi["reference"] / s} for way, s in spi.items()]


def readme_table(payload: dict) -> str:
    """The README's table of a results file of this benchmark (markdown)."""
    rows = {(r["stage"], r["way"]): r for r in payload["records"]}
    fast, ref = payload["ways"]["wsss-fast"], payload["ways"]["reference"]
    names = {"cam": "CAM (psa, 8 passes)", "rw": "random walk (AffinityNet forward + walk)",
             "crf": "CRF (PSA preset, 21 labels)", "total": "CAM + RW + CRF"}
    lines = [f"{payload['environment']['device']} ({payload['cpu']['cores_available']} cores; "
             f"bfloat16 flags: {', '.join(payload['cpu']['bf16_flags']) or 'none'}), "
             f"{payload['images']} images, commit {payload['environment']['commit']}, "
             f"{payload['environment']['date']}; load before: {payload['uptime_before_after'][0]}; "
             f"after: {payload['uptime_before_after'][1]}.",
             "",
             f"| stage | wsss-fast ({fast['precision']}, {fast['threads']} threads) | reference way "
             f"(float32, {ref['threads']} threads) | ratio |",
             "| --- | --- | --- | --- |"]
    for stage in ("cam", "rw", "crf", "total"):
        f, r = rows[(stage, "wsss-fast")], rows[(stage, "reference")]
        lines.append(f"| {names[stage]} | {f['seconds_per_image']:.3g} s | {r['seconds_per_image']:.3g} s | "
                     f"{f['speedup']:.2f}x |")
    lines += ["", f"Labels after the walk agree on {100 * payload['label_agreement']:.3f}% of the pixels "
              f"(first {payload['dense_n']} images); CAMs differ by at most {payload['cam_max_abs_diff']:.2g}; "
              f"CRF marginals ({payload['ways']['wsss-fast']['crf_backend']} against pydensecrf) differ by "
              f"at most {payload['crf_max_abs_diff']:.2g}, argmax equal on "
              f"{100 * payload['crf_argmax_agreement']:.4g}% of the pixels."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4, help="images (default 4)")
    parser.add_argument("--dense-n", type=int,
                        help="images for the reference (dense) walk, the first ones (default: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads of both ways (default: wsss-fast's policy and torch's default)")
    parser.add_argument("--cpu-precision", choices=cpu.PRECISIONS, default="auto",
                        help="wsss-fast's network precision on the CPU (default auto)")
    parser.add_argument("--crf-workers", type=int, default=cpu.available_cores(),
                        help="processes of the CRF pool (default: available cores)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch (default 8)")
    parser.add_argument("--backbone", default="resnet38", help="registry name (default resnet38)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="backbone option (repeatable; VALUE read as JSON when it parses)")
    parser.add_argument("--small", action="store_true", help="64 x 48 images instead of VOC's (smoke test)")
    parser.add_argument("--no-write", action="store_true",
                        help="do not write benchmarks/results/ (nor the README's table)")
    args = parser.parse_args()
    dense_n = args.n if args.dense_n is None else args.dense_n
    if args.n < 1 or not 1 <= dense_n <= args.n:
        parser.error(f"need --n >= 1 and 1 <= --dense-n <= --n, got --n {args.n} --dense-n {dense_n}")

    before = uptime()
    options = vars(args)
    workers = {name: Worker(name, options) for name in WAYS}
    fast, ref = workers["wsss-fast"], workers["reference"]
    sizes = SMALL_SIZES if args.small else bench_cam.VOC_SIZES
    inputs = bench_cam.make_inputs(args.n, sizes)
    batches = batches_by_size([tuple(image.shape[1:]) for image, _ in inputs], args.batch_size)
    records = []

    print(f"cam: {args.n} images, batched and one at a time ...", flush=True)
    (cams, fast_t), (loop, ref_t) = alternate(batches, [lambda idx: fast("cam", idx), lambda idx: ref("cam", idx)])
    cam_diff = max(float(np.abs(cams[i] - loop[i]).max()) for i in cams)
    records += stage_records(
        "cam", {"method": f"batch_cams, batches of {args.batch_size}", "images": args.n, **fast_t,
                "max_abs_diff": cam_diff},
        {"method": "cam_loop, one image per forward", "images": args.n, **ref_t})

    print(f"rw: {args.n} images sparse, {dense_n} dense ...", flush=True)
    (sparse, fast_t), (dense, ref_t) = alternate(
        batches, [lambda idx: fast("rw", idx), lambda idx: ref("rw", idx)], only={1: range(dense_n)})
    agreement = float(np.mean([(sparse[i][1] == dense[i][1]).mean() for i in dense]))
    records += stage_records(
        "rw", {"method": f"sparse ops.random_walk, batches of {args.batch_size}", "images": args.n,
               **fast_t, "label_agreement_vs_reference": agreement},
        {"method": "dense T^256 (PSA), one image at a time", "images": dense_n, **ref_t})

    print(f"crf: {args.n} images, {fast.settings['crf_backend']} backend and serial pydensecrf ...", flush=True)
    fast_q, fast_t = fast("crf_all")
    ref_q, ref_t = ref("crf_all")
    crf_diff = max(float(np.abs(a - b).max()) for a, b in zip(fast_q, ref_q))
    crf_agreement = (sum(int((a.argmax(0) == b.argmax(0)).sum()) for a, b in zip(fast_q, ref_q))
                     / sum(a[0].size for a in ref_q))
    records += stage_records(
        "crf", {"method": f"dense_crf_batch, {fast.settings['crf_backend']} backend", "images": args.n,
                **fast_t, "max_abs_diff": crf_diff, "argmax_agreement": crf_agreement},
        {"method": "pydensecrf loop, 1 process", "images": args.n, **ref_t})
    for worker in workers.values():
        worker.close()

    records += total_records(records)
    after = uptime()
    print_table(records, ["stage", "way", "method", "images", "seconds_per_image", "images_per_second",
                          "speedup", "cores_used"])
    print(f"wsss-fast: {fast.settings}; reference: {ref.settings}")
    print(f"cam max |wsss-fast - reference| {cam_diff:.2g}; labels after the walk (first {dense_n} images) "
          f"agree on {100 * agreement:.4g}% of pixels; crf marginals differ by at most {crf_diff:.2g}, "
          f"argmax equal on {100 * crf_agreement:.4g}% of pixels")
    print(f"uptime before: {before}\nuptime after:  {after}")
    if not args.no_write:
        path = write_results("pipeline", args.device, records, backbone=args.backbone,
                             backbone_options=bench_cam.parse_options(args.option), image_sizes=sizes,
                             images=args.n, num_classes=bench_cam.NUM_CLASSES, cam_preset="psa",
                             walk=vars(WalkSettings()) | {"radius": 5}, dense_n=dense_n,
                             crf_preset="psa", crf_labels=bench_crf.CLASSES, crf_workers=args.crf_workers,
                             ways={"wsss-fast": fast.settings, "reference": ref.settings},
                             cpu=cpu_description(), cam_max_abs_diff=cam_diff, label_agreement=agreement,
                             crf_max_abs_diff=crf_diff, crf_argmax_agreement=crf_agreement,
                             uptime_before_after=[before, after])
        print(f"wrote {path}")
        if torch.device(args.device).type == "cpu" and not args.small:
            update_readme("pipeline-cpu", readme_table(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
