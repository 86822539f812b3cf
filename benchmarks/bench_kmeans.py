"""K-means at the SC-CAM shape: wsss-fast against scikit-learn, the
pure-PyTorch reference, fast-pytorch-kmeans and faiss.

Shape (SPEC.md, "SC-CAM"): one clustering per VOC class of the pooled
features of the images that contain it: 20 groups of the VOC2012 trainval
per-class image counts (devkit Table 1: 670 aeroplane ... 4087 person;
16,682 points in all), D = 4096 (ResNet-38), 2048 and 512; K = 10,
n_init = 10, max_iter = 300, tol = 1e-4.

Data: synthetic but clustered like pooled ReLU features. For each class, 12
sub-modes m = relu(b + 0.6 z) around a sparse non-negative class profile
b = 2 u^3 (u uniform), mode weights uniform in [0.2, 1.2]; every image is
relu((m + 0.8 z') * s) with a per-image scale s = exp(0.25 z''); z are
standard normal. About 71 % of the features are non-zero.

Contenders (all on one device, float32):
  wsss-fast            ops.kmeans, all groups and runs in one call;
  sklearn              one KMeans(n_clusters=10, n_init=10, max_iter=300,
                       tol=1e-4, random_state=0) per group, as the reference
                       SC-CAM code does (CPU only), BLAS on one thread (its
                       fastest setting on this machine, see sklearn_fit);
  sklearn-seed1        the same with random_state=1: how far another seed of
                       the same algorithm lands from random_state=0 (the
                       yardstick for the per-group inertia differences);
  reference            wsss_fast.reference.kmeans (pure PyTorch);
  fast-pytorch-kmeans  one KMeans(10, max_iter=300, tol=1e-4,
                       init_method="kmeans++") per group, best of 10 fits
                       (it has no n_init); its own tolerance rule;
  faiss                one faiss.Kmeans(niter=300, nredo=10, k-means++ init)
                       per group, all points (max_points_per_centroid
                       raised); it stops when the objective no longer changes
                       (no relative tolerance) (CPU only).
Inertia is recomputed for every tool from its labels and centroids, in
float64; "vs sklearn" is the relative excess over scikit-learn's inertia:
of the total, and of the worst group.

Every (tool, D) runs in a fresh Python process, so that no tool competes
with thread pools another one left spinning (2-core machine). For wsss-fast
the per-iteration time (the second Lloyd iteration, when all
G x n_init runs are active: time(max_iter=2) - time(max_iter=1)) is compared
with the floor of one read of X at the measured read bandwidth of a sum
over X.

With --device cuda (the default when a GPU is there) the GPU contenders
(wsss-fast, reference, fast-pytorch-kmeans) run on it and the CPU-only ones
(scikit-learn, faiss) on the host's cores, as a user of the reference code
would run them; each record's "device" says where.

Usage: python benchmarks/bench_kmeans.py [--device cpu|cuda] [--dims 4096 2048 512]
       [--skip TOOL ...] [--reps N]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import wsss_fast  # noqa: E402
from common import measure, print_table, write_results  # noqa: E402

VOC_TRAINVAL_IMAGES = {
    "aeroplane": 670, "bicycle": 552, "bird": 765, "boat": 508, "bottle": 706,
    "bus": 421, "car": 1161, "cat": 1080, "chair": 1119, "cow": 303,
    "diningtable": 538, "dog": 1286, "horse": 482, "motorbike": 526, "person": 4087,
    "pottedplant": 527, "sheep": 325, "sofa": 507, "train": 544, "tvmonitor": 575,
}
K, N_INIT, MAX_ITER, TOL = 10, 10, 300, 1e-4


def sccam_features(d: int, seed: int = 0, modes: int = 12):
    """(x (N, d) float32, groups (N,) int64): the data of the module docstring."""
    g = torch.Generator().manual_seed(seed)
    xs, gs = [], []
    for c, n in enumerate(VOC_TRAINVAL_IMAGES.values()):
        profile = torch.rand(d, generator=g) ** 3 * 2
        means = torch.relu(profile + 0.6 * torch.randn(modes, d, generator=g))
        weights = torch.rand(modes, generator=g) + 0.2
        which = torch.multinomial(weights / weights.sum(), n, replacement=True, generator=g)
        scale = torch.exp(0.25 * torch.randn(n, 1, generator=g))
        xs.append(torch.relu((means[which] + 0.8 * torch.randn(n, d, generator=g)) * scale))
        gs.append(torch.full((n,), c, dtype=torch.long))
    return torch.cat(xs), torch.cat(gs)


def group_inertia(x, groups, labels, centroids) -> np.ndarray:
    """(G,) float64 inertia of every group from labels (N,) and centroids (G, k, d)."""
    x, groups, labels = x.cpu().double(), groups.cpu(), labels.cpu().long()
    c = centroids.cpu().double()
    out = np.zeros(c.shape[0])
    for grp in range(c.shape[0]):
        m = groups == grp
        out[grp] = float(((x[m] - c[grp][labels[m]]) ** 2).sum())
    return out


# ------------------------------------------------------------------ contenders
def run_wsss(x, groups):
    r = wsss_fast.ops.kmeans(x, K, groups=groups, n_init=N_INIT, max_iter=MAX_ITER, tol=TOL)
    return r.labels, r.centroids


def run_reference(x, groups):
    r = wsss_fast.reference.kmeans(x, K, groups=groups, n_init=N_INIT, max_iter=MAX_ITER, tol=TOL)
    return r.labels, r.centroids


def per_group(fit):
    """Turns fit(points) -> (labels, centroids) into a grouped contender."""
    def run(x, groups):
        num = int(groups.max()) + 1
        labels = torch.zeros(len(groups), dtype=torch.long)
        centroids = torch.zeros(num, K, x.shape[1], dtype=torch.float64)
        for grp in range(num):
            m = (groups == grp).cpu()
            lab, cen = fit(x[m.to(x.device)])
            labels[m] = torch.as_tensor(np.asarray(lab), dtype=torch.long).cpu()
            centroids[grp] = torch.as_tensor(np.asarray(cen), dtype=torch.float64).cpu()
        return labels, centroids
    return run


def sklearn_fit(points, random_state=0):
    # BLAS limited to one thread: scikit-learn's fastest setting here (its
    # OpenMP threads and OpenBLAS's spinning threads fight over 2 cores; the
    # default took 70 s instead of 6 s for the person group at D = 4096).
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1, user_api="blas"):
        km = KMeans(K, n_init=N_INIT, max_iter=MAX_ITER, tol=TOL,
                    random_state=random_state).fit(points.cpu().numpy())
    return km.labels_, km.cluster_centers_


def fpk_fit(points):
    from fast_pytorch_kmeans import KMeans
    best = None
    for i in range(N_INIT):
        torch.manual_seed(i)
        km = KMeans(K, max_iter=MAX_ITER, tol=TOL, init_method="kmeans++")
        lab = km.fit_predict(points)
        c = km.centroids
        inertia = float(((points.double() - c.double()[lab]) ** 2).sum())
        if best is None or inertia < best[0]:
            best = (inertia, lab.cpu(), c.cpu())
    return best[1], best[2]


def faiss_fit(points):
    import faiss
    p = np.ascontiguousarray(points.cpu().numpy(), dtype=np.float32)
    km = faiss.Kmeans(p.shape[1], K, niter=MAX_ITER, nredo=N_INIT, seed=1234, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=1 << 30,
                      init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS)
    km.train(p)
    _, lab = km.index.search(p, 1)
    return lab[:, 0], km.centroids


def available(name: str) -> str | None:
    """None if the tool imports, else why not."""
    module = {"sklearn": "sklearn", "sklearn-seed1": "sklearn", "fast-pytorch-kmeans": "fast_pytorch_kmeans", "faiss": "faiss"}.get(name)
    if module is None:
        return None
    try:
        __import__(module)
    except ImportError as exc:
        return f"not installed ({exc})"
    return None


# ------------------------------------------------------------------ main
def read_bandwidth_gbs(x: torch.Tensor) -> float:
    t = measure(lambda: x.sum(), x.device, warmup=2, reps=10)
    return x.numel() * x.element_size() / (t["min_ms"] * 1e-3) / 1e9


def per_iteration_ms(x, groups, reps: int) -> float:
    def timed(max_iter):
        return measure(lambda: wsss_fast.ops.kmeans(x, K, groups=groups, n_init=N_INIT,
                                                    max_iter=max_iter, tol=TOL),
                       x.device, warmup=1, reps=reps)["min_ms"]
    return max(timed(2) - timed(1), 0.0)


TOOLS = {"sklearn": per_group(sklearn_fit),
         "sklearn-seed1": per_group(lambda points: sklearn_fit(points, random_state=1)),
         "wsss-fast": run_wsss, "reference": run_reference,
         "fast-pytorch-kmeans": per_group(fpk_fit), "faiss": per_group(faiss_fit)}
CPU_ONLY = ("sklearn", "sklearn-seed1", "faiss")


def child(spec: dict) -> dict:
    """Times one tool at one D in this (fresh) process; returns its record."""
    device = torch.device(spec["device"])
    x, groups = sccam_features(spec["d"])
    x, groups = x.to(device), groups.to(device)
    out = {}

    def call():
        out["result"] = TOOLS[spec["tool"]](x, groups)
    timing = measure(call, device, warmup=1 if spec["reps"] > 1 else 0, reps=spec["reps"])
    rec = {"tool": spec["tool"], "device": spec["device"], "d": spec["d"], "n": len(groups),
           "groups": int(groups.max()) + 1,
           "k": K, "n_init": N_INIT, "max_iter": MAX_ITER, "tol": TOL, **timing,
           "inertia_per_group": group_inertia(x, groups, *out["result"]).tolist()}
    rec["inertia"] = sum(rec["inertia_per_group"])
    if spec["tool"] == "wsss-fast":
        rec["per_iter_ms"] = per_iteration_ms(x, groups, spec["reps"])
        bw = read_bandwidth_gbs(x)
        rec["read_bandwidth_gbs"] = bw
        rec["x_read_floor_ms"] = x.numel() * x.element_size() / (bw * 1e9) * 1e3
    return rec


def run_child(spec: dict) -> dict:
    """Runs child(spec) in a new Python process: every tool starts without the
    thread pools (OpenMP, OpenBLAS) another tool left spinning."""
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec}: child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dims", type=int, nargs="+", default=[4096, 2048, 512])
    parser.add_argument("--reps", type=int, default=3, help="timed runs of wsss-fast")
    parser.add_argument("--skip", nargs="*", default=[], help="tools to leave out")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    device = torch.device(args.device)
    records, skipped = [], {}
    for d in args.dims:
        for name in TOOLS:
            why = "skipped (--skip)" if name in args.skip else available(name)
            if why:
                skipped[name] = why
                continue
            reps = args.reps if name == "wsss-fast" else 1
            tool_device = "cpu" if name in CPU_ONLY else args.device
            rec = run_child({"tool": name, "d": d, "device": tool_device, "reps": reps})
            records.append(rec)
            print(f"d={d} {name}: {rec['median_ms'] / 1e3:.2f} s", flush=True)
    for rec in records:
        sk = next((r for r in records if r["tool"] == "sklearn" and r["d"] == rec["d"]), None)
        if sk is None:
            continue
        mine, ref = np.array(rec["inertia_per_group"]), np.array(sk["inertia_per_group"])
        rec["speedup_vs_sklearn"] = sk["median_ms"] / rec["median_ms"]
        rec["vs_sklearn_total_pct"] = float(100 * (mine.sum() / ref.sum() - 1))
        rec["vs_sklearn_worst_group_pct"] = float(100 * np.max(mine / ref - 1))
    print_table(records, ["d", "tool", "device", "median_ms", "reps", "speedup_vs_sklearn", "inertia",
                          "vs_sklearn_total_pct", "vs_sklearn_worst_group_pct", "per_iter_ms",
                          "x_read_floor_ms"])
    path = write_results("kmeans", device, records, skipped=skipped,
                         data=sccam_features.__doc__ + " See the module docstring.",
                         voc_trainval_images=VOC_TRAINVAL_IMAGES)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
