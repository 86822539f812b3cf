"""IRN's random walk per VOC-sized image: IRN's dense way against the sparse
operator (issue 16).

One 500 x 375 image gives IRN a 125 x 94 grid at stride 4 (N = 11,750
pixels). Contenders, float32, radius 5, beta 10, exp_times 8 (256 steps),
C = 3 CAM channels (IRN walks the image's classes only; the dense way's cost
does not depend on C):

  sparse   wsss_fast.boundary.boundary_random_walk: the path affinities
           (1 - max boundary along each pair's path) and 256 stencil steps of
           wsss_fast.ops.random_walk.
  dense    IRN's misc/indexing.py propagate_to_edge as wsss_fast.reference.irn
           writes it out: path index of the padded grid, edge_to_affinity, the
           dense N x N affinity matrix (built on the padded grid, then cropped),
           ^beta, columns normalised, squared 8 times, then cams @ T.

Each contender runs in a fresh subprocess; peak memory is the process's
growth during the call (benchmarks/common.py PeakMemory: resident set on CPU,
max_memory_allocated on CUDA). On CPU the dense way is estimated (one
squaring of 11,750^2 is 3.2 TFLOP, minutes here): the construction, the
power-and-normalise step and two squarings are timed (two, so that the peak
includes the three N x N buffers every later squaring holds), and the
estimate is construction + normalise + 8 x the mean squaring + the final
product; its records say "estimated": true. --full-dense (or CUDA) runs it.

The cost of the pure-PyTorch path affinities (boundary_affinity), the step
for which a compiled operator would be added if it were the bottleneck, is
set against its neighbours per image: at inference, the walk and the
boundary network's forward (ResNet-50 on the image and its mirror padded to
512 x 512, as IRN); in training, the forward and backward of the radius-10
affinities on a 128 x 128 grid against those of the boundary network on a
512 x 512 crop.

Accuracy: the sparse walk (float32) against the dense walk in float64 on a
48 x 36 grid (a 192 x 144 image).

--threads sets torch's CPU threads in every process (default: torch's). On a
machine shared with other jobs use 1: OpenMP's barriers between the walk's 256
steps spin against the other jobs, and 2 threads measured 2-8x slower than 1
on this project's 2-core machine under load 6.

Usage: python benchmarks/bench_irn.py [--device cpu|cuda] [--channels 3] [--threads N] [--full-dense]
       python benchmarks/bench_irn.py --table [--device cpu]   (README table from the results file)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import RESULTS_DIR, PeakMemory, device_tag, print_table, run_child, timed, write_results  # noqa: E402

RADIUS, BETA, EXP_TIMES, TRAIN_RADIUS = 5, 10.0, 8, 10
VOC = (94, 125)           # stride-4 grid of a 375 x 500 image
ACCURACY_GRID = (36, 48)  # stride-4 grid of a 144 x 192 image


def inputs(h: int, w: int, channels: int, device, dtype=torch.float32, seed: int = 0):
    """(cams (1, C, h, w) max-normalised, boundary (1, 1, h, w)): boundary
    probabilities mostly low with some high values, like a trained map."""
    g = torch.Generator().manual_seed(seed)
    cams = torch.rand(1, channels, h, w, generator=g, dtype=torch.float64)
    cams /= cams.amax((2, 3), keepdim=True)
    edge = torch.rand(1, 1, h, w, generator=g, dtype=torch.float64) ** 3
    return cams.to(device, dtype), edge.to(device, dtype)


# ------------------------------------------------------------------ child side

def child(spec: dict) -> dict:
    from wsss_fast.boundary import boundary_affinity, boundary_random_walk
    from wsss_fast.reference import irn as ref

    device = torch.device(spec["device"])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    h, w = spec["h"], spec["w"]
    cams, edge = inputs(h, w, spec["channels"], device)
    small_cams, small_edge = inputs(9, 11, spec["channels"], device)
    boundary_random_walk(small_cams, small_edge, RADIUS, BETA, 4)  # warm-up: thread pools, lazy init
    ref.propagate_to_edge(small_cams[0], small_edge[0, 0], RADIUS, BETA, 2)
    contender = spec["contender"]
    if contender == "sparse":
        with PeakMemory(device) as mem:
            out, ms = timed(lambda: boundary_random_walk(cams, edge, RADIUS, BETA, 2 ** EXP_TIMES), device)
        times = [ms] + [timed(lambda: boundary_random_walk(cams, edge, RADIUS, BETA, 2 ** EXP_TIMES), device)[1]
                        for _ in range(spec["reps"] - 1)]
        aff_ms = min(timed(lambda: boundary_affinity(edge, RADIUS), device)[1] for _ in range(spec["reps"]))
        return dict(times_ms=times, peak_bytes=mem.peak, estimated=False, affinity_ms=aff_ms)
    if contender == "dense":
        with PeakMemory(device) as mem:
            out, ms = timed(lambda: ref.propagate_to_edge(cams[0], edge[0, 0], RADIUS, BETA, EXP_TIMES), device)
        return dict(times_ms=[ms], peak_bytes=mem.peak, estimated=False)
    if contender == "dense_estimate":
        n = h * w
        with PeakMemory(device) as mem:
            dense, build_ms = timed(lambda: ref.padded_affinity(edge[0, 0], RADIUS), device)
            t, norm_ms = timed(lambda: ref.transition_power(dense, BETA, 0), device)
            z, ms1 = timed(lambda: t @ t, device)
            z, ms2 = timed(lambda: z @ z, device)
            _, final_ms = timed(lambda: (cams[0] * (1 - edge[0, 0])).reshape(-1, n) @ z, device)
        square_ms = (ms1 + ms2) / 2
        total = build_ms + norm_ms + EXP_TIMES * square_ms + final_ms
        return dict(times_ms=[total], peak_bytes=mem.peak, estimated=True, build_ms=build_ms,
                    normalise_ms=norm_ms, square_ms=square_ms, final_ms=final_ms)
    if contender == "affinity_share":
        return affinity_share(device, spec["reps"])
    raise ValueError(f"unknown contender {contender!r}")


def affinity_share(device: torch.device, reps: int) -> dict:
    """Per image: boundary_affinity against the boundary network (ResNet-50,
    random weights) at inference (radius 5, 125 x 94 grid; network on the
    image and its mirror padded to 512) and in training (radius 10, 128 x 128
    grid, forward + backward; network on one 512 crop)."""
    from wsss_fast.boundary import boundary_affinity
    from wsss_fast.models import build_backbone
    from wsss_fast.models.irn import BoundaryNet

    torch.manual_seed(0)
    net = BoundaryNet(build_backbone("resnet50")).to(device)
    image = torch.randn(1, 3, 375, 500, device=device)
    crop = torch.randn(1, 3, 512, 512, device=device)
    _, edge = inputs(*VOC, 1, device)
    train_edge = torch.rand(1, 1, 128, 128, device=device)

    def best(fn):
        fn()
        return min(timed(fn, device)[1] for _ in range(reps))

    def train_affinity():
        e = train_edge.clone().requires_grad_()
        boundary_affinity(e, TRAIN_RADIUS).sum().backward()

    def train_net():
        net.train()
        net(crop).sum().backward()

    net.eval()
    return dict(infer_affinity_ms=best(lambda: boundary_affinity(edge, RADIUS)),
                infer_network_ms=best(lambda: net.predict(image, 512)),
                train_affinity_ms=best(train_affinity), train_network_ms=best(train_net))


# ----------------------------------------------------------------- parent side

def accuracy(channels: int) -> dict:
    """Max relative difference of the float32 sparse walk to the float64
    dense walk (IRN's formulation) on ACCURACY_GRID."""
    from wsss_fast.boundary import boundary_random_walk
    from wsss_fast.reference import irn as ref

    cams, edge = inputs(*ACCURACY_GRID, channels, "cpu", torch.float64)
    truth = ref.propagate_to_edge(cams[0], edge[0, 0], RADIUS, BETA, EXP_TIMES)
    got = boundary_random_walk(cams.float(), edge.float(), RADIUS, BETA, 2 ** EXP_TIMES)[0].double()
    rel = (got - truth).abs() / truth.abs().clamp_min(1e-12)
    return {"grid": list(ACCURACY_GRID), "max_rel_diff": float(rel.max()),
            "truth": "dense float64 (wsss_fast.reference.irn.propagate_to_edge)"}


def table(device: str) -> str:
    """The README's markdown table from results/irn-<device>.json."""
    data = json.loads((RESULTS_DIR / f"irn-{device_tag(device)}.json").read_text())
    by = {r["contender"]: r for r in data["records"] if "contender" in r}
    env, share = data["environment"], data["affinity_share"]
    h, w = data["settings"]["grid"]
    sparse, dense = by["sparse"], by["dense"]

    def seconds(ms):
        if ms >= 1e5:
            return f"{ms / 1e3:.0f} s"
        return f"{ms / 1e3:.3g} s" if ms >= 1000 else f"{ms:.3g} ms"

    est = " (estimated from 2 of the 8 squarings)" if dense["estimated"] else ""
    threads = f"{env['threads']} thread{'s' if env['threads'] != 1 else ''}"
    lines = [f"{env['device']}, {threads}, torch {env['torch']}, commit {env['commit']}, "
             f"load average {data['load_average_before_after'][0][0]:.1f} before / "
             f"{data['load_average_before_after'][1][0]:.1f} after",
             "",
             f"| IRN walk, {w} x {h} grid (N = {h * w:,}), C = {data['settings']['channels']} | seconds | "
             "peak memory |",
             "| --- | --- | --- |",
             f"| dense N x N matrix, 8 squarings (IRN's way) | {seconds(dense['median_ms'])}{est} | "
             f"{dense['peak_mib']:.0f} MiB |",
             f"| sparse: path affinities + 256 stencil steps | {seconds(sparse['median_ms'])} | "
             f"{sparse['peak_mib']:.1f} MiB |",
             f"| speedup | {dense['median_ms'] / sparse['median_ms']:.0f}x | "
             f"{dense['peak_mib'] / max(sparse['peak_mib'], 1e-9):.0f}x less |",
             "",
             "| per image | path affinities (pure PyTorch) | the rest |",
             "| --- | --- | --- |",
             f"| inference (radius 5, 125 x 94) | {seconds(share['infer_affinity_ms'])} | walk with the path "
             f"affinities {seconds(sparse['median_ms'])}, boundary network (image + mirror at 512 x 512) "
             f"{seconds(share['infer_network_ms'])} |",
             f"| training (radius 10, 128 x 128, fwd + bwd) | {seconds(share['train_affinity_ms'])} | "
             f"boundary network on a 512 crop, fwd + bwd {seconds(share['train_network_ms'])} |"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--channels", type=int, default=3, help="CAM channels (default 3)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--full-dense", action="store_true", help="run the dense walk instead of estimating it")
    parser.add_argument("--grid", type=int, nargs=2, default=VOC, metavar=("H", "W"),
                        help="the walk's grid (default 94 125, a 375 x 500 image at stride 4)")
    parser.add_argument("--table", action="store_true", help="print the README table of the results file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.table:
        print(table(args.device))
        return
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    estimate = device.type == "cpu" and not args.full_dense
    load_before = os.getloadavg()
    h, w = args.grid
    records = []
    for contender, reps in [("sparse", 5), ("dense_estimate" if estimate else "dense", 1)]:
        print(f"running {contender} ...", flush=True)
        res = run_child(__file__, dict(device=str(device), h=h, w=w, channels=args.channels,
                                       contender=contender, reps=reps, threads=args.threads))
        times = sorted(res.pop("times_ms"))
        records.append(dict(contender=contender.replace("_estimate", ""), h=h, w=w, n=h * w,
                            channels=args.channels, median_ms=times[len(times) // 2], min_ms=times[0],
                            reps=len(times), peak_mib=res.pop("peak_bytes") / 2**20, **res))
    print("running affinity_share ...", flush=True)
    share = run_child(__file__, dict(device=str(device), h=h, w=w, channels=args.channels,
                                     contender="affinity_share", reps=3, threads=args.threads))
    acc = accuracy(args.channels)
    by = {r["contender"]: r for r in records}
    speedup = by["dense"]["median_ms"] / by["sparse"]["median_ms"]
    print_table(records, ["contender", "n", "channels", "median_ms", "min_ms", "reps", "estimated", "peak_mib"])
    print("path affinities vs the rest, per image (ms):", json.dumps(share, indent=1))
    print("accuracy:", acc, f"speedup {speedup:.0f}x")
    path = write_results("irn", device, records, affinity_share=share, accuracy=acc, speedup_vs_dense=speedup,
                         settings=dict(radius=RADIUS, beta=BETA, exp_times=EXP_TIMES, n_steps=2 ** EXP_TIMES,
                                       channels=args.channels, train_radius=TRAIN_RADIUS, dtype="float32",
                                       grid=[h, w]),
                         load_average_before_after=[load_before, os.getloadavg()],
                         memory_method=("CPU: growth of VmHWM over VmRSS during the call in a fresh "
                                        "subprocess (VmHWM reset via /proc/self/clear_refs); CUDA: "
                                        "max_memory_allocated growth"))
    print(f"wrote {path}")
    print(table(args.device))


if __name__ == "__main__":
    main()
