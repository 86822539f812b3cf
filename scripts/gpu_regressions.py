#!/usr/bin/env python
"""Targeted regressions of the wsss_fast kernels on one device (issue 15).

    python scripts/gpu_regressions.py [--device cuda|cpu] [--tiny] [--only PREFIX ...]
                                      [--seed N] [--list]

On CUDA (phase 4 of scripts/gpu_check.sh) it checks:
  drs.*          the 48 KiB shared-memory window shapes in float32/float16/bfloat16,
                 N * C = 32768 on the plane and the chunk path, the plane/chunk
                 boundary of this device up to 1200 x 1100, ties and NaN on the
                 chunk path, and a bitwise-repeatable backward; forward equal to
                 the reference composition, gradients within RTOL of it;
  affinity.*     D = 448 at radius 16, 5 and 1 against the CPU float64 kernel;
  random_walk.*  against the CPU float64 kernel at IRN's grid, 6 images of
                 128 x 128, radius 16, images smaller than the radius and 1 x 1;
  kmeans.*       against the CPU kernel on SC-CAM-like data (run twice for
                 determinism) and float64 with n_init = 1, k = 6000;
  dense_crf.*    against the CPU kernel (argmax agreement >= 99.9%, marginals
                 within 1e-4) on 500 x 375 photo crops and a noise image (the
                 largest bilateral lattice), PSA and DeepLab presets, 21 and 2
                 labels, run twice for determinism; batches split into several
                 groups and mixed label counts equal to one image at a time.
``--tiny`` runs instead every kernel once on tiny inputs (what phase 5 runs
under compute-sanitizer), still checking the results. ``--device cpu`` runs
the same checks with the CPU kernels, CPU dtypes and smaller sizes: the dry run
that keeps this script from rotting (tests/test_gpu_check.py).

Inputs are drawn from a fresh seed, printed first (``--seed`` repeats a run).
Every check prints one line with its seconds; the exit status is 1 if any
check failed.
"""
from __future__ import annotations

import argparse
import math
import secrets
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wsss_fast import ops, reference  # noqa: E402
from wsss_fast.pairs import pair_count  # noqa: E402

# Gradient tolerance relative to the largest reference gradient (tests/test_drs.py).
DRS_RTOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 1e-2, torch.bfloat16: 2e-2}
# Opt-in shared memory per block of sm_90, for the CPU dry run's boundary sizes.
SM90_OPTIN = 227 * 1024
# Static shared memory of the DRS plane kernels (forward, backward), bytes.
DRS_STATIC_SMEM = (128, 256)


@dataclass
class Ctx:
    """What a check runs on: the device, its DRS dtypes, the size scale and a generator."""
    device: torch.device
    tiny: bool
    seed: int
    gen: torch.Generator = field(init=False)

    def __post_init__(self):
        self.gen = torch.Generator().manual_seed(self.seed)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def drs_dtypes(self) -> tuple[torch.dtype, ...]:
        return (torch.float32, torch.float16, torch.bfloat16) if self.cuda else (torch.float32,
                                                                                 torch.float64)

    def half_dtypes(self) -> tuple[torch.dtype, ...]:
        """The 2-byte dtypes on CUDA; on the CPU, float64 stands in for them."""
        return (torch.float16, torch.bfloat16) if self.cuda else (torch.float64,)

    def randn(self, *shape, dtype=torch.float32) -> torch.Tensor:
        """Normal values drawn in float64 on the CPU, rounded to dtype, on the device."""
        return torch.randn(*shape, generator=self.gen, dtype=torch.float64).to(self.device, dtype)

    def rand(self, *shape, dtype=torch.float32) -> torch.Tensor:
        return torch.rand(*shape, generator=self.gen, dtype=torch.float64).to(self.device, dtype)


CHECKS: dict[str, tuple[Callable[[Ctx], str | None], bool]] = {}


def check(name: str, tiny: bool = False):
    """Registers fn(ctx) -> optional detail string; it raises AssertionError on failure."""
    def register(fn):
        CHECKS[name] = (fn, tiny)
        return fn
    return register


# ------------------------------------------------------------------- DRS


def drs_run(fn, x, gate, grad_out):
    """fn's output and gradients (x, and gate when it is a tensor)."""
    xi = x.detach().clone().requires_grad_()
    gi = gate.detach().clone().requires_grad_() if isinstance(gate, torch.Tensor) else gate
    out = fn(xi, gi)
    inputs = (xi, gi) if isinstance(gi, torch.Tensor) else (xi,)
    return out.detach(), torch.autograd.grad(out, inputs, grad_out)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.double().abs().max().item()
    return (a.double() - b.double()).abs().max().item() / (scale if scale > 0 else 1.0)


def drs_compare(x, gate, grad_out, label: str) -> None:
    """ops.drs against the reference composition on x's device: the forward
    bit for bit (NaN where the reference has NaN), the gradients within
    DRS_RTOL of the largest reference gradient."""
    out, grads = drs_run(ops.drs, x, gate, grad_out)
    ref_out, ref_grads = drs_run(reference.drs, x, gate, grad_out)
    assert out.shape == ref_out.shape and out.is_contiguous(), f"{label}: output layout"
    assert torch.equal(out.isnan(), ref_out.isnan()), f"{label}: NaN pattern differs"
    assert torch.equal(out.nan_to_num(), ref_out.nan_to_num()), (
        f"{label}: forward differs by up to {(out - ref_out).abs().nan_to_num().max().item():.3g}")
    for name, g, r in zip(("x", "gate"), grads, ref_grads):
        err = rel_err(g, r)
        assert err <= DRS_RTOL[x.dtype], f"{label}: grad_{name} relative error {err:.3g}"


def drs_case(ctx: Ctx, shape, dtype, gates=("tensor", 0.55)) -> None:
    x = ctx.randn(*shape, dtype=dtype)
    grad_out = ctx.randn(*shape, dtype=dtype)
    for gate in gates:
        g = ctx.rand(*shape[:2], dtype=dtype) if gate == "tensor" else gate
        drs_compare(x, g, grad_out, f"{tuple(shape)} {str(dtype)[6:]} gate={gate}")


@check("drs.window_48k")
def drs_window(ctx: Ctx) -> str:
    """Planes with <= 48 KiB of dynamic shared memory but more with the
    kernels' static 128 / 256 B: the edges of the windows (float32 12225..12288,
    2-byte 24449..24576 for the backward) and the issue's shapes."""
    cases = [((2, 3, 96, 128), torch.float32), ((2, 3, 48, 256), torch.float32),
             ((2, 3, 64, 192), torch.float32)]
    cases += [((2, 3, 1, s), torch.float32) for s in (12224, 12225, 12256, 12257, 12288, 12289)]
    for dtype in ctx.half_dtypes():
        cases += [((2, 3, 128, 192), dtype)]
        cases += [((2, 3, 1, s), dtype) for s in (24448, 24449, 24512, 24513, 24576, 24577)]
    for shape, dtype in cases:
        drs_case(ctx, shape, dtype)
    return f"{len(cases)} shapes"


def drs_compare_planes(x, gate, grad_out, rows: torch.Tensor, label: str) -> None:
    """For a batch too large for the reference at once: the op on all of x,
    the reference on the planes `rows` (flat n * C + c indices) only; planes
    are independent, so they must agree exactly as in drs_compare."""
    n, c, h, w = x.shape
    out, (grad_x, grad_gate) = drs_run(ops.drs, x, gate, grad_out)
    flat = lambda t: t.reshape(n * c, 1, *t.shape[2:])  # noqa: E731
    sub = lambda t: flat(t)[rows].contiguous()  # noqa: E731
    ref_out, (ref_gx, ref_gg) = drs_run(reference.drs, sub(x), gate.reshape(-1, 1)[rows],
                                        sub(grad_out))
    assert torch.equal(sub(out), ref_out), f"{label}: forward differs"
    assert rel_err(sub(grad_x), ref_gx) <= DRS_RTOL[x.dtype], f"{label}: grad_x differs"
    assert rel_err(grad_gate.reshape(-1, 1)[rows], ref_gg) <= DRS_RTOL[x.dtype], (
        f"{label}: grad_gate differs")


@check("drs.many_planes")
def drs_many_planes(ctx: Ctx) -> str:
    """N * C = 32768 planes (refused before issue 15): small planes (plane
    path) in every dtype against the reference on all planes, and on CUDA
    241 x 241 float32 planes (the chunk path; 7.6 GB per tensor) against the
    reference on 64 of the planes."""
    for dtype in ctx.drs_dtypes:
        drs_case(ctx, (64, 512, 6, 5), dtype, gates=("tensor",))
    n, c, side = (64, 512, 241) if ctx.cuda else (4, 16, 60)
    gen = torch.Generator(ctx.device).manual_seed(ctx.seed)
    x = torch.randn(n, c, side, side, generator=gen, device=ctx.device)
    grad_out = torch.randn(n, c, side, side, generator=gen, device=ctx.device)
    gate = torch.rand(n, c, generator=gen, device=ctx.device)
    rows = torch.cat([torch.arange(16), torch.arange(n * c - 16, n * c),
                      torch.randperm(n * c, generator=ctx.gen)[:32]]).to(ctx.device)
    drs_compare_planes(x, gate, grad_out, rows, f"({n}, {c}, {side}, {side}) float32")
    return f"chunk path at N * C = {n * c}, {side} x {side}"


def plane_limits(ctx: Ctx, elem: int) -> list[int]:
    """Largest plane sizes of the backward and forward plane kernels here."""
    optin = SM90_OPTIN
    if ctx.cuda:
        optin = torch.cuda.get_device_properties(ctx.device).shared_memory_per_block_optin
    return [(optin - s) // elem for s in reversed(DRS_STATIC_SMEM)]


@check("drs.plane_chunk_boundary")
def drs_boundary(ctx: Ctx) -> str:
    """Both sides of this device's largest staged plane (backward and forward
    kernels), the largest square and the next one, and 1200 x 1100."""
    cases = []
    for dtype in ctx.drs_dtypes:
        elem = torch.tensor([], dtype=dtype).element_size()
        bwd, fwd = plane_limits(ctx, elem)
        cases += [((1, 3, 1, s), dtype) for s in (bwd - 1, bwd, bwd + 1, fwd, fwd + 1)]
        side = math.isqrt(bwd)
        cases += [((1, 2, side, side), dtype), ((1, 2, side + 1, side + 1), dtype),
                  ((1, 2, 1200, 1100), dtype)]
    for shape, dtype in cases:
        drs_case(ctx, shape, dtype)
    return f"{len(cases)} shapes, float32 limit {plane_limits(ctx, 4)[0]} elements"


@check("drs.chunk_ties_nan")
def drs_ties_nan(ctx: Ctx) -> str:
    """Chunk-path planes (400 x 400) with values on a 0.25 grid (many exact
    ties with the max and with the threshold), an all-negative and an all-zero
    plane, gates 0 / 0.5 / 1; then NaNs in two planes: those planes' output is
    NaN, every other plane as the reference, gradients too."""
    side = 400 if ctx.cuda else 64
    for dtype in ctx.drs_dtypes:
        x = (torch.randint(-4, 9, (2, 4, side, side), generator=ctx.gen) * 0.25).to(ctx.device, dtype)
        x[0, 0] = -1.0
        x[1, 3] = 0.0
        gate = torch.tensor([0.0, 0.5, 1.0, 0.75], dtype=dtype).repeat(2, 1).to(ctx.device)
        grad_out = ctx.randn(*x.shape, dtype=dtype)
        drs_compare(x, gate, grad_out, f"ties {str(dtype)[6:]}")
        drs_compare(x, 0.5, grad_out, f"ties {str(dtype)[6:]} delta")
        x[0, 1, side - 1, 5] = float("nan")
        x[1, 2, 0, 0] = float("nan")
        out = ops.drs(x, gate)
        assert out[0, 1].isnan().all() and out[1, 2].isnan().all(), "a NaN plane is not all NaN"
        keep = torch.tensor([0, 2, 3, 4, 5, 7], device=ctx.device)
        drs_compare_planes(x, gate, grad_out, keep, f"NaN {str(dtype)[6:]}")
    return f"{side} x {side}"


@check("drs.repeatable_backward")
def drs_repeatable(ctx: Ctx) -> str:
    """The backward (grad_x and grad_gate) twice: bit-identical, on the plane
    and the chunk path."""
    sides = (64, 400) if ctx.cuda else (16, 64)
    for dtype in ctx.drs_dtypes:
        for side in sides:
            x = ctx.randn(2, 8, side, side, dtype=dtype)
            gate = ctx.rand(2, 8, dtype=dtype)
            grad_out = ctx.randn(2, 8, side, side, dtype=dtype)
            first = drs_run(ops.drs, x, gate, grad_out)[1]
            second = drs_run(ops.drs, x, gate, grad_out)[1]
            assert all(torch.equal(a, b) for a, b in zip(first, second)), (
                f"{side} x {side} {dtype}: backward differs between two runs")
    return f"sides {sides}"


@check("drs.tiny", tiny=True)
def drs_tiny(ctx: Ctx) -> str:
    """Every DRS kernel: plane path (small, and one over 48 KiB), chunk path,
    forward and backward, tensor gate and constant, every dtype."""
    cases = [((2, 3, 5, 7), dtype) for dtype in ctx.drs_dtypes]
    cases += [((1, 2, 96, 128), torch.float32), ((1, 2, 241, 241), torch.float32)]
    cases += [((1, 1, 341, 341), dtype) for dtype in ctx.half_dtypes()]
    for shape, dtype in cases:
        drs_case(ctx, shape, dtype)
    return f"{len(cases)} shapes"


# -------------------------------------------------------------- affinity


def affinity_case(ctx: Ctx, shape, radius: int) -> None:
    """float32 op on the device against the CPU float64 kernel on the same
    (float32-representable) features: forward and the features' gradient."""
    f = ctx.randn(*shape).cpu().double()
    g = torch.randn(shape[0], pair_count(radius), *shape[2:], generator=ctx.gen,
                    dtype=torch.float64)
    f64 = f.clone().requires_grad_()
    truth = ops.affinity(f64, radius)
    (truth * g).sum().backward()
    x = f.float().to(ctx.device).requires_grad_()
    out = ops.affinity(x, radius)
    (out * g.float().to(ctx.device)).sum().backward()
    label = f"affinity {tuple(shape)} radius {radius}"
    torch.testing.assert_close(out.detach().cpu().double(), truth.detach(), rtol=1e-4, atol=1e-6,
                               msg=lambda m: f"{label} forward: {m}")
    torch.testing.assert_close(x.grad.cpu().double(), f64.grad, rtol=1e-4, atol=1e-5,
                               msg=lambda m: f"{label} backward: {m}")


@check("affinity.d448")
def affinity_d448(ctx: Ctx) -> str:
    """AffinityNet's 448 feature channels at radius 16 (396 pairs), 5 and 1
    (no pairs: an empty output, a zero gradient)."""
    shape = (2, 448, 24, 28) if ctx.cuda else (1, 448, 10, 12)
    for radius in (16, 5, 1):
        affinity_case(ctx, shape, radius)
    return f"{shape}"


@check("affinity.tiny", tiny=True)
def affinity_tiny(ctx: Ctx) -> str:
    affinity_case(ctx, (1, 4, 6, 7), 3)
    affinity_case(ctx, (1, 2, 5, 18), 16)
    return "radius 3 and 16"


# ------------------------------------------------------------ random walk


def walk_inputs(ctx: Ctx, b, c, h, w, radius):
    """float32-representable maps in [0.05, 1) and affinities with aff^8
    uniform in [0, 1) and about 10% exact zeros (tests/test_random_walk.py)."""
    cam = (0.05 + 0.95 * torch.rand(b, c, h, w, generator=ctx.gen, dtype=torch.float64)).float()
    aff = torch.rand(b, pair_count(radius), h, w, generator=ctx.gen, dtype=torch.float64) ** 0.125
    aff[torch.rand(aff.shape, generator=ctx.gen) < 0.1] = 0
    return cam, aff.float()


def walk_case(ctx: Ctx, shape, radius: int, beta: float = 8.0, n_steps: int = 256,
              tol: float = 1e-4) -> float:
    """float32 walk on the device against the CPU float64 kernel, both borders;
    returns the largest elementwise relative error."""
    cam, aff = walk_inputs(ctx, *shape, radius)
    worst = 0.0
    for border in ("all", "psa"):
        truth = ops.random_walk(cam.double(), aff.double(), radius, beta, n_steps, border)
        out = ops.random_walk(cam.to(ctx.device), aff.to(ctx.device), radius, beta, n_steps,
                              border).cpu()
        err = ((out.double() - truth).abs() / truth.abs()).max().item()
        assert err <= tol, f"random walk {shape} radius {radius} {border}: rel error {err:.3g}"
        worst = max(worst, err)
    return worst


@check("random_walk.irn")
def walk_irn(ctx: Ctx) -> str:
    """IRN's grid (a 500 x 375 image at stride 4: 94 x 125), 21 maps, beta
    10, 256 steps, radius 5."""
    shape = (1, 21, 94, 125) if ctx.cuda else (1, 3, 24, 30)
    return f"{shape} max rel error {walk_case(ctx, shape, 5, beta=10.0):.2g}"


@check("random_walk.batch_128")
def walk_batch(ctx: Ctx) -> str:
    """6 images of 128 x 128: the weights no longer fit in shared memory."""
    shape = (6, 2, 128, 128) if ctx.cuda else (2, 2, 32, 32)
    return f"{shape} max rel error {walk_case(ctx, shape, 5):.2g}"


@check("random_walk.radius16")
def walk_radius16(ctx: Ctx) -> str:
    shape = (2, 3, 40, 44) if ctx.cuda else (1, 2, 36, 40)
    return f"{shape} max rel error {walk_case(ctx, shape, 16):.2g}"


@check("random_walk.small_images")
def walk_small(ctx: Ctx) -> str:
    """Images smaller than the radius, and 1 x 1 (no pair at all)."""
    for shape, radius in [((2, 3, 3, 4), 5), ((2, 3, 3, 4), 16), ((1, 2, 1, 1), 5),
                          ((1, 2, 1, 1), 16), ((1, 2, 15, 2), 16)]:
        walk_case(ctx, shape, radius)
    return "5 shapes"


@check("random_walk.tiny", tiny=True)
def walk_tiny(ctx: Ctx) -> str:
    walk_case(ctx, (1, 3, 9, 10), 5, n_steps=3)
    return "(1, 3, 9, 10) radius 5, 3 steps"


# ------------------------------------------------------------------ kmeans


def sq_dists(x, centroids, groups) -> torch.Tensor:
    """(N, k) float64 squared distances of every point to its group's centroids."""
    c = centroids.double()[groups]
    return ((x.double()[:, None, :] - c) ** 2).sum(-1)


def check_nearest(x, groups, result, label: str) -> None:
    """Every label is (within rounding) its point's nearest centroid and the
    inertia is the sum of the squared distances to it."""
    x, groups = x.cpu(), groups.cpu()
    labels, centroids = result.labels.cpu(), result.centroids.cpu()
    rtol = 1e-5 if x.dtype == torch.float32 else 1e-10
    assigned = torch.empty(len(x), dtype=torch.float64)
    block = max(1, 2**24 // centroids[0].numel())  # (block, k, D) float64 at a time: 128 MiB
    for start in range(0, len(x), block):
        rows = slice(start, start + block)
        d = sq_dists(x[rows], centroids, groups[rows])
        mine = d.gather(1, labels[rows, None]).squeeze(1)
        scale = (x[rows].double() ** 2).sum(1) + d.min(1).values + 1e-12
        assert bool((mine <= d.min(1).values + rtol * scale).all()), f"{label}: not nearest"
        assigned[rows] = mine
    inertia = torch.zeros(result.inertia.shape[0], dtype=torch.float64).index_add_(0, groups, assigned)
    torch.testing.assert_close(result.inertia.cpu(), inertia, rtol=10 * rtol, atol=1e-9,
                               msg=lambda m: f"{label} inertia: {m}")


def assert_same(a, b, label: str) -> None:
    for name in a._fields:
        assert torch.equal(getattr(a, name).cpu().nan_to_num(), getattr(b, name).cpu().nan_to_num()), (
            f"{label}: {name} differs between two runs")


@check("kmeans.sccam")
def kmeans_sccam(ctx: Ctx) -> str:
    """SC-CAM's shape (20 VOC classes, 16,682 pooled feature vectors, k = 10,
    n_init = 10): twice on the device (bit-identical), against the CPU kernel
    (its own floating-point order may pick another local minimum: total
    inertia within 0.5%, every group within 3%, the spread of scikit-learn
    against itself with another seed)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_kmeans import sccam_features

    d = 2048 if ctx.cuda else 64
    x, groups = sccam_features(d)
    dev_x, dev_g = x.to(ctx.device), groups.to(ctx.device)
    a = ops.kmeans(dev_x, 10, groups=dev_g, n_init=10)
    b = ops.kmeans(dev_x, 10, groups=dev_g, n_init=10)
    assert_same(a, b, "kmeans SC-CAM")
    check_nearest(x, groups, a, "kmeans SC-CAM")
    cpu = ops.kmeans(x, 10, groups=groups, n_init=10)
    total = (a.inertia.sum() / cpu.inertia.sum() - 1).item()
    worst = (a.inertia.cpu() / cpu.inertia - 1).abs().max().item()
    assert abs(total) <= 5e-3 and worst <= 3e-2, (
        f"kmeans SC-CAM vs CPU: total inertia {100 * total:+.3f}%, worst group {100 * worst:.2f}%")
    return f"D = {d}, total inertia vs CPU {100 * total:+.4f}%"


def separated_blobs(ctx: Ctx, k: int, per: int, d: int) -> torch.Tensor:
    """k blob centres uniform in [0, 100)^d, per points within 0.01 of each:
    k-means with k clusters has one answer, the blobs."""
    centres = 100 * torch.rand(k, d, generator=ctx.gen, dtype=torch.float64)
    return (centres.repeat_interleave(per, 0)
            + 0.01 * torch.randn(k * per, d, generator=ctx.gen, dtype=torch.float64))


@check("kmeans.k6000_float64")
def kmeans_k6000(ctx: Ctx) -> str:
    """float64, n_init = 1, k = 6000 clusters of 12,000 points: twice on the
    device (bit-identical), and the same partition (the blobs) and inertia as
    the CPU kernel."""
    k = 6000 if ctx.cuda else 300
    x = separated_blobs(ctx, k, 2, 8)
    groups = torch.zeros(len(x), dtype=torch.long)
    a = ops.kmeans(x.to(ctx.device), k, n_init=1, max_iter=20)
    b = ops.kmeans(x.to(ctx.device), k, n_init=1, max_iter=20)
    assert_same(a, b, f"kmeans k = {k}")
    cpu = ops.kmeans(x, k, n_init=1, max_iter=20)
    for name, r in (("device", a), ("cpu", cpu)):
        labels = r.labels.cpu()
        assert torch.equal(labels[0::2], labels[1::2]) and len(labels.unique()) == k, (
            f"kmeans k = {k} ({name}): the clusters are not the blobs")
    check_nearest(x, groups, a, f"kmeans k = {k}")
    torch.testing.assert_close(a.inertia.cpu(), cpu.inertia, rtol=1e-9, atol=0)
    return f"k = {k}, inertia {a.inertia.item():.4g}"


@check("kmeans.tiny", tiny=True)
def kmeans_tiny(ctx: Ctx) -> str:
    """Both dtypes, both inits, 3 groups (one empty), against the CPU kernel."""
    for dtype in (torch.float32, torch.float64):
        x = separated_blobs(ctx, 9, 7, 5).to(dtype)
        groups = torch.arange(9).repeat_interleave(7) % 4
        groups[groups == 2] = 3
        for init in ("k-means++", "random"):
            r = ops.kmeans(x.to(ctx.device), 3, groups=groups.to(ctx.device), n_init=2, init=init)
            check_nearest(x, groups, r, f"kmeans tiny {dtype} {init}")
    return "float32, float64"


# --------------------------------------------------------------- dense CRF


def crf_inputs(ctx: Ctx, b: int, k: int, h: int, w: int, noise: bool = False):
    """(b, 3, h, w) uint8 photo crops (or uniform noise) and (b, k, h, w)
    softmax maps of smooth random logits, on the CPU."""
    from wsss_fast.data.demo import SKLEARN_PHOTOS, load_photos

    if noise:
        images = torch.randint(0, 256, (b, 3, h, w), generator=ctx.gen, dtype=torch.uint8)
    else:
        photos = [torch.from_numpy(p.copy()).permute(2, 0, 1) for p in load_photos()[:len(SKLEARN_PHOTOS)]]
        images = []
        for i in range(b):
            photo = photos[i % len(photos)]
            top = int(torch.randint(0, photo.shape[1] - min(h, photo.shape[1]) + 1, (1,),
                                    generator=ctx.gen))
            crop = photo[:, top:top + h].float()[None]
            images.append(torch.nn.functional.interpolate(crop, size=(h, w), mode="bilinear")[0]
                          .round().clamp(0, 255).to(torch.uint8))
        images = torch.stack(images)
    logits = 3 * torch.randn(b, k, 12, 16, generator=ctx.gen)
    probs = torch.softmax(torch.nn.functional.interpolate(logits, size=(h, w), mode="bilinear"), 1)
    return images, probs.contiguous()


def crf_truth(ctx: Ctx, images, probs, preset, num_labels=None):
    """The CPU kernel's marginals, or on the CPU dry run the lattice reference's."""
    from wsss_fast.ops.dense_crf import PRESETS

    if not ctx.cuda:
        p = PRESETS[preset]
        return reference.dense_crf(images, probs, num_labels, p.iterations, p.gaussian_sxy,
                                   p.gaussian_compat, p.bilateral_sxy, p.bilateral_srgb,
                                   p.bilateral_compat)
    return ops.dense_crf(images, probs, preset, num_labels)


# Max abs marginal difference allowed: on a GPU against the CPU kernel; on the CPU dry run
# against the float32 lattice reference, whose other summation order the mean field amplifies
# (150 random seeds x 8 cases, AMD EPYC: up to 1.5e-3, psa K = 21 on noise; argmax always equal).
CRF_ATOL = {"cuda": 1e-4, "cpu": 5e-3}


def crf_case(ctx: Ctx, images, probs, preset, num_labels=None, label: str = "") -> float:
    """Marginals on the device against the CPU (twice: bitwise repeatable);
    returns the max abs difference."""
    atol = CRF_ATOL["cuda" if ctx.cuda else "cpu"]
    truth = crf_truth(ctx, images, probs, preset, num_labels)
    dev = [t.to(ctx.device) if t is not None else None for t in (images, probs, num_labels)]
    out = ops.dense_crf(dev[0], dev[1], preset, dev[2])
    assert torch.equal(out, ops.dense_crf(dev[0], dev[1], preset, dev[2])), \
        f"dense_crf {label}: two runs differ"
    out = out.cpu()
    agree = (out.argmax(1) == truth.argmax(1)).double().mean().item()
    diff = (out - truth).abs().max().item()
    assert agree >= 0.999 and diff <= atol, \
        f"dense_crf {label}: argmax agreement {agree:.6f}, max abs difference {diff:.3g}"
    return diff


@check("dense_crf.voc")
def crf_voc(ctx: Ctx) -> str:
    h, w = (375, 500) if ctx.cuda else (18, 24)
    worst = 0.0
    for k in (21, 2):
        for noise in (False, True):
            images, probs = crf_inputs(ctx, 2, k, h, w, noise)
            for preset in ("psa", "deeplab"):
                worst = max(worst, crf_case(ctx, images, probs, preset,
                                            label=f"{preset} K={k} noise={noise}"))
    return f"2 x {h} x {w}, K = 21 and 2, photos and noise: max abs difference {worst:.2g}"


@check("dense_crf.groups")
def crf_groups(ctx: Ctx) -> str:
    """4 images of 600 x 1800 (6.5M corners each): two groups of 2 on CUDA;
    mixed label counts."""
    h, w = (600, 1800) if ctx.cuda else (30, 90)
    images, probs = crf_inputs(ctx, 4, 3, h, w)
    counts = torch.tensor([3, 1, 2, 3])
    dev_images, dev_probs = images.to(ctx.device), probs.to(ctx.device)
    out = ops.dense_crf(dev_images, dev_probs, "psa", counts.to(ctx.device))
    for b in range(4):
        k = int(counts[b])
        alone = ops.dense_crf(dev_images[b:b + 1], dev_probs[b:b + 1, :k].contiguous(), "psa")
        assert torch.equal(out[b:b + 1, :k], alone), f"dense_crf groups: image {b} differs"
        assert not out[b, k:].any(), f"dense_crf groups: image {b} has non-zero padding labels"
    diff = crf_case(ctx, images[:2], probs[:2], "deeplab", counts[:2], label="groups")
    return f"4 x {h} x {w}: max abs difference {diff:.2g}"


@check("dense_crf.tiny", tiny=True)
def crf_tiny(ctx: Ctx) -> str:
    images, probs = crf_inputs(ctx, 2, 3, 13, 11)
    crf_case(ctx, images, probs, "psa", torch.tensor([3, 2]), label="tiny")
    images, probs = crf_inputs(ctx, 1, 40, 5, 7, noise=True)
    crf_case(ctx, images, probs, "deeplab", label="tiny K=40")
    return "(2, 3, 13, 11) and (1, 40, 5, 7)"


# -------------------------------------------------------------------- main


def run_checks(ctx: Ctx, names: list[str]) -> int:
    failed = 0
    for name in names:
        fn, _ = CHECKS[name]
        start = time.perf_counter()
        try:
            detail = fn(ctx) or ""
            if ctx.cuda:
                torch.cuda.synchronize(ctx.device)
            status = "ok  "
        except Exception as exc:  # noqa: BLE001  (report every check, then fail)
            failed += 1
            status = "FAIL"
            detail = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        print(f"{status} {name:<28} {time.perf_counter() - start:7.2f} s  {detail}", flush=True)
        if ctx.cuda:
            torch.cuda.empty_cache()
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--tiny", action="store_true",
                        help="every kernel once on tiny inputs (for compute-sanitizer)")
    parser.add_argument("--only", nargs="+", metavar="PREFIX", default=[],
                        help="run the checks whose name starts with one of these")
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh random seed")
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    args = parser.parse_args(argv)
    names = [n for n, (_, tiny) in CHECKS.items() if tiny == args.tiny
             and (not args.only or any(n.startswith(p) for p in args.only))]
    if args.list:
        print("\n".join(names))
        return 0
    if not names:
        parser.error(f"--only {' '.join(args.only)} matches no check (see --list)")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    seed = args.seed if args.seed is not None else secrets.randbits(31)
    print(f"gpu_regressions: device {device}, seed {seed} (--seed {seed} repeats this run)",
          flush=True)
    failed = run_checks(Ctx(device, args.tiny, seed), names)
    print(f"{len(names) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
