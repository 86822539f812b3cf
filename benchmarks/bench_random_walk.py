"""Sparse random walk against PSA's dense matrix power (issue 4).

Contenders, all float32, radius 5, beta 8, 256 steps, border "all", B = 1,
C = 21:
  sparse_kernel    wsss_fast.ops.random_walk (compiled stencil kernel)
  sparse_reference wsss_fast.reference.random_walk (pure PyTorch shifts)
  dense            wsss_fast.reference.random_walk_dense: PSA's construction,
                   the N x N transition matrix squared 8 times, then cam @ T.
Grids: PSA's 63 x 47 (stride 8) and IRN's 125 x 94 (stride 4).

Each contender runs in a fresh subprocess. Peak memory on CPU is the growth
of the process's resident set during one call: the kernel's high-water mark
(VmHWM) is reset through /proc/self/clear_refs just before the call and read
after it, minus the resident set before it (torch's own allocations included,
nothing else in the process allocates meanwhile). Small allocations can
reuse heap pages already resident, so peaks of a few MiB are lower bounds;
the sparse kernel's records also give the bytes its buffers take
(kernel_buffers_mib: weights, two padded state buffers, output). On CUDA it
is torch.cuda.max_memory_allocated growth.

The dense walk at IRN's size takes ~4.5 min on this 2-core machine (one
squaring is 3.2 TFLOP), so on CPU it is estimated: the matrix construction and
two squarings are timed (two, so that the peak memory includes the three N x N
buffers every later squaring holds too), and the estimate is construction +
8 x mean squaring + the final cam @ T. Records say "estimated": true.

The largest grid the dense walk can do here is computed, not run: the larger
measured peak bytes per N^2 (PSA, IRN) against a memory cap (default 16 GiB of this
machine's ~23 GiB, shared with other jobs; on CUDA 90% of the GPU's memory), with its
time extrapolated as N^3 from the measured squaring (CPU only: on CUDA the dense walk
runs in full at IRN's size). The sparse kernel is then timed at that grid.

Usage: python benchmarks/bench_random_walk.py [--device cpu|cuda] [--cap-gib GIB]
           [--full-dense]   (run the dense walk at IRN's size instead of estimating)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import PeakMemory, print_table, run_child, timed, write_results  # noqa: E402

RADIUS, BETA, STEPS, CHANNELS, BORDER = 5, 8.0, 256, 21, "all"
GRIDS = {"PSA": (63, 47), "IRN": (125, 94)}


def inputs(h, w, device, dtype=torch.float32, seed=0):
    """PSA-like inputs: maps in [0, 1), affinities with aff^8 uniform in [0, 1)."""
    from wsss_fast.pairs import pair_count

    g = torch.Generator().manual_seed(seed)
    cam = torch.rand(1, CHANNELS, h, w, generator=g, dtype=torch.float64)
    aff = torch.rand(1, pair_count(RADIUS), h, w, generator=g, dtype=torch.float64) ** (1 / BETA)
    return cam.to(device, dtype), aff.to(device, dtype)


# ------------------------------------------------------------------ child side

def child(spec: dict) -> dict:
    from wsss_fast import ops, reference

    device, h, w = spec["device"], spec["h"], spec["w"]
    cam, aff = inputs(h, w, device)
    fns = {
        "sparse_kernel": lambda: ops.random_walk(cam, aff, RADIUS, BETA, STEPS, BORDER),
        "sparse_reference": lambda: reference.random_walk(cam, aff, RADIUS, BETA, STEPS, BORDER),
        "dense": lambda: reference.random_walk_dense(cam, aff, RADIUS, BETA, STEPS, BORDER),
    }
    # Warm-up on a tiny grid: thread pools and lazy initialisation, not counted.
    small_cam, small_aff = inputs(9, 9, device)
    ops.random_walk(small_cam, small_aff, RADIUS, BETA, 2, BORDER)
    reference.random_walk_dense(small_cam, small_aff, RADIUS, BETA, 2, BORDER)
    result = {}
    if spec["contender"] == "dense_estimate":
        n = h * w
        with PeakMemory(device) as mem:
            t, build_ms = timed(lambda: reference.transition_matrix(aff[0], RADIUS, BETA, BORDER),
                                 device)
            # Like torch.linalg.matrix_power: T stays alive while z is squared,
            # so the second squaring holds T, z and z @ z, as every later one.
            z, ms1 = timed(lambda: t @ t, device)
            z, ms2 = timed(lambda: z @ z, device)
            squarings = [ms1, ms2]
            out, final_ms = timed(lambda: cam[0].reshape(CHANNELS, n) @ z, device)
        square_ms = sum(squarings) / len(squarings)
        steps_log2 = int(math.log2(STEPS))
        result.update(times_ms=[build_ms + steps_log2 * square_ms + final_ms], build_ms=build_ms,
                      square_ms=square_ms, estimated=True, peak_bytes=mem.peak)
        return result
    fn = fns[spec["contender"]]
    with PeakMemory(device) as mem:
        out, first_ms = timed(fn, device)
    times = [first_ms] + [timed(fn, device)[1] for _ in range(spec["reps"] - 1)]
    if spec.get("save"):
        torch.save(out.cpu(), spec["save"])
    result.update(times_ms=times, estimated=False, peak_bytes=mem.peak)
    return result


# ----------------------------------------------------------------- parent side

def kernel_buffer_bytes(h: int, w: int) -> int:
    """Bytes the CPU sparse kernel allocates for B = 1: (2P + 1) x H x Wv
    weights, two C x (H + 2m) x (Wv + 2m) state buffers (m = radius - 1, Wv = W
    rounded up to 4 floats) and the C x H x W output, float32."""
    from wsss_fast.pairs import pair_count

    m, wv = RADIUS - 1, -(-w // 4) * 4
    s = 2 * pair_count(RADIUS) + 1
    return 4 * (s * h * wv + 2 * CHANNELS * (h + 2 * m) * (wv + 2 * m) + CHANNELS * h * w)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / |b| over the elements (the maps are positive)."""
    return ((a.double() - b.double()).abs() / b.double().abs()).max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cap-gib", type=float, default=None,
                        help="memory cap for the largest dense grid (GiB; default 16 on the CPU, "
                             "90%% of the GPU's memory on CUDA)")
    parser.add_argument("--full-dense", action="store_true",
                        help="run the dense walk at IRN's size instead of estimating it")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    from wsss_fast import ops, reference

    device = torch.device(args.device)
    if args.cap_gib is None:
        args.cap_gib = (0.9 * torch.cuda.get_device_properties(device).total_memory / 2**30
                        if device.type == "cuda" else 16.0)
    estimate_irn = device.type == "cpu" and not args.full_dense
    tmp = Path(tempfile.mkdtemp(prefix="bench_rw_"))
    load_before = os.getloadavg()
    records, outputs = [], {}
    plan = [("PSA", "sparse_kernel", 20), ("PSA", "sparse_reference", 3), ("PSA", "dense", 2),
            ("IRN", "sparse_kernel", 10), ("IRN", "sparse_reference", 2),
            ("IRN", "dense_estimate" if estimate_irn else "dense", 1)]
    for grid, contender, reps in plan:
        h, w = GRIDS[grid]
        save = tmp / f"{grid}-{contender}.pt"
        spec = dict(device=str(device), h=h, w=w, contender=contender, reps=reps, save=str(save))
        print(f"running {grid} {contender} ...", flush=True)
        res = run_child(__file__, spec)
        if save.exists():
            outputs[(grid, contender)] = torch.load(save, weights_only=True)
        times = sorted(res["times_ms"])
        records.append(dict(grid=grid, h=h, w=w, n=h * w, channels=CHANNELS,
                            contender=contender.replace("_estimate", ""),
                            median_ms=times[len(times) // 2], min_ms=times[0], reps=len(times),
                            estimated=res["estimated"], peak_bytes=res["peak_bytes"],
                            peak_mib=res["peak_bytes"] / 2**20,
                            **{k: res[k] for k in ("build_ms", "square_ms") if k in res}))
        if contender == "sparse_kernel" and device.type == "cpu":
            records[-1]["kernel_buffers_mib"] = kernel_buffer_bytes(h, w) / 2**20
    shutil.rmtree(tmp, ignore_errors=True)

    # Accuracy: float32 contenders against each other and against float64 truth.
    accuracy = {}
    for grid, (h, w) in GRIDS.items():
        cam64, aff64 = inputs(h, w, "cpu", torch.float64)
        if grid == "PSA":
            truth = reference.random_walk_dense(cam64, aff64, RADIUS, BETA, STEPS, BORDER)
            truth_name = "dense_float64"
        else:
            truth = ops.random_walk(cam64, aff64, RADIUS, BETA, STEPS, BORDER)
            truth_name = "sparse_kernel_float64_cpu"
        acc = {"truth": truth_name}
        for contender in ("sparse_kernel", "sparse_reference", "dense"):
            if (grid, contender) in outputs:
                acc[f"{contender}_vs_truth"] = rel_diff(outputs[(grid, contender)], truth)
        if (grid, "dense") in outputs:
            acc["sparse_kernel_vs_dense"] = rel_diff(outputs[(grid, "sparse_kernel")],
                                                     outputs[(grid, "dense")])
        accuracy[grid] = acc

    by = {(r["grid"], r["contender"]): r for r in records}
    speedups = {grid: by[(grid, "dense")]["median_ms"] / by[(grid, "sparse_kernel")]["median_ms"]
                for grid in GRIDS}
    for r in records:
        r["speedup_vs_dense"] = by[(r["grid"], "dense")]["median_ms"] / r["median_ms"]

    # Largest dense grid under the cap, from the measured bytes per N^2 at IRN's
    # size, and its time extrapolated as N^3 from the IRN squaring.
    irn = by[("IRN", "dense")]
    per_n2 = {g: by[(g, "dense")]["peak_bytes"] / by[(g, "dense")]["n"] ** 2 for g in GRIDS}
    bytes_per_n2 = max(per_n2.values())
    cap = args.cap_gib * 2**30
    n_max = int(math.sqrt(cap / bytes_per_n2))
    side = int(math.sqrt(n_max))
    largest = dict(cap_gib=args.cap_gib, bytes_per_n2_measured=per_n2, bytes_per_n2=bytes_per_n2,
                   n_max=n_max,
                   square_grid=[side, side], square_grid_image_px_at_stride8=side * 8)
    scale = (side * side / irn["n"]) ** 3
    if "square_ms" in irn:
        largest["dense_estimated_s"] = (irn["build_ms"] * (side * side / irn["n"]) ** 2
                                        + math.log2(STEPS) * irn["square_ms"] * scale) / 1e3
    else:  # measured in full: the squarings (N^3) dominate
        largest["dense_estimated_s"] = irn["median_ms"] * scale / 1e3
    print(f"running sparse_kernel at the largest dense grid {side} x {side} ...", flush=True)
    big = run_child(__file__, dict(device=str(device), h=side, w=side, contender="sparse_kernel",
                                   reps=2, save=""))
    largest["sparse_kernel_ms"] = sorted(big["times_ms"])[0]
    largest["sparse_kernel_peak_mib"] = big["peak_bytes"] / 2**20

    print_table(records, ["grid", "n", "contender", "median_ms", "min_ms", "reps", "estimated",
                          "peak_mib", "kernel_buffers_mib", "speedup_vs_dense"])
    print("accuracy (max elementwise relative difference):", json.dumps(accuracy, indent=1))
    print("speedup of the sparse kernel over the dense matrix power:",
          {k: round(v, 1) for k, v in speedups.items()})
    print("largest dense grid:", json.dumps(largest, indent=1))
    path = write_results("random_walk", device, records, accuracy=accuracy,
                         speedup_vs_dense=speedups, largest_dense_grid=largest,
                         settings=dict(radius=RADIUS, beta=BETA, n_steps=STEPS, channels=CHANNELS,
                                       border=BORDER, batch=1, dtype="float32"),
                         load_average_before_after=[load_before, os.getloadavg()],
                         memory_method=("CPU: growth of VmHWM over VmRSS during one call in a "
                                        "fresh subprocess (VmHWM reset via /proc/self/clear_refs); "
                                        "CUDA: max_memory_allocated growth"))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
