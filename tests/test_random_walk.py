"""Tests of pair_offsets, affinity and random_walk (issue 4).

Ground truth of the random walk: wsss_fast.reference.random_walk_dense in
float64, PSA's dense N x N transition matrix raised to the power n_steps by
repeated squaring. Tolerance: elementwise relative error
|out - ref| <= tol * |ref| with tol = 1e-4 for float32 and 1e-10 for float64
(the maps are strictly positive, so the relative error is well defined).
"""
from __future__ import annotations

import functools

import pytest
import torch

from bad_args import changed, with_value
from wsss_fast import BackendWarning, _backend, ops, reference
from wsss_fast.pairs import pair_count

COMPILED = _backend.has_kernel("random_walk", "cpu")
needs_compiled = pytest.mark.skipif(not COMPILED, reason="compiled extension not built")
HAS_CUDA = torch.cuda.is_available() and _backend.has_kernel("random_walk", "cuda")
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and the CUDA build")

TOL = {torch.float32: 1e-4, torch.float64: 1e-10}


def make_inputs(b, c, h, w, radius, dtype=torch.float64, seed=0):
    """Strictly positive maps in [0.05, 1); affinities with aff^8 uniform in
    [0, 1) (so the walk mixes strongly) and about 10% exact zeros."""
    g = torch.Generator().manual_seed(seed)
    cam = 0.05 + 0.95 * torch.rand(b, c, h, w, generator=g, dtype=torch.float64)
    aff = torch.rand(b, pair_count(radius), h, w, generator=g, dtype=torch.float64) ** 0.125
    aff[torch.rand(aff.shape, generator=g) < 0.1] = 0
    return cam.to(dtype), aff.to(dtype)


@functools.lru_cache(maxsize=None)
def dense_truth(shape, radius, beta, n_steps, border, seed):
    cam, aff = make_inputs(*shape, radius, torch.float64, seed)
    return reference.random_walk_dense(cam, aff, radius, beta, n_steps, border)


def rel_err(out, ref):
    return ((out.double() - ref).abs() / ref.abs()).max().item()


# ---------------------------------------------------------------- pair_offsets

def test_pair_offsets_psa_order():
    assert ops.pair_offsets(2).tolist() == [[0, 1], [1, -1], [1, 0], [1, 1]]
    assert ops.pair_offsets(3).tolist() == [[0, 1], [0, 2], [1, -2], [1, -1], [1, 0], [1, 1],
                                            [1, 2], [2, -2], [2, -1], [2, 0], [2, 1], [2, 2]]
    off = ops.pair_offsets(5)
    assert off.dtype == torch.int64 and off.shape == (34, 2)
    assert off[:4].tolist() == [[0, 1], [0, 2], [0, 3], [0, 4]]
    assert off[4].tolist() == [1, -4] and off[-1].tolist() == [4, 2]
    assert ops.pair_offsets(1).shape == (0, 2)
    assert [len(ops.pair_offsets(r)) for r in (8, 16)] == [96, 396]


@pytest.mark.parametrize("radius", [2, 5, 8])
def test_pair_offsets_rule(radius):
    pairs = [tuple(p) for p in ops.pair_offsets(radius).tolist()]
    assert pairs == sorted(pairs)  # dy, then dx ascending
    assert len(set(pairs)) == len(pairs)
    assert all(dy * dy + dx * dx < radius * radius for dy, dx in pairs)
    # exactly one of o, -o for every non-zero offset within the radius
    full = {(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
            if 0 < dy * dy + dx * dx < radius * radius}
    assert set(pairs) | {(-dy, -dx) for dy, dx in pairs} == full


@pytest.mark.parametrize("radius, exc", [(0, ValueError), (17, ValueError), (2.5, TypeError),
                                         (True, TypeError)])
def test_pair_offsets_bad_radius(radius, exc):
    with pytest.raises(exc, match="radius"):
        ops.pair_offsets(radius)


# -------------------------------------------------------------------- affinity

AFF_CASES = [((2, 16, 13, 17), 5), ((1, 3, 4, 20), 5), ((2, 5, 13, 3), 5), ((2, 8, 11, 9), 2),
             ((1, 4, 20, 20), 8), ((1, 2, 5, 5), 1)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape, radius", AFF_CASES)
def test_affinity_matches_reference(shape, radius, dtype):
    f = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    out = ops.affinity(f, radius)
    assert out.shape == (shape[0], pair_count(radius), shape[2], shape[3])
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(out, reference.affinity(f, radius), **tol)


def test_affinity_zero_outside_and_order():
    f = torch.randn(1, 3, 6, 7, dtype=torch.float64)
    out = ops.affinity(f, 3)
    for k, (dy, dx) in enumerate(ops.pair_offsets(3).tolist()):
        for y, x in [(0, 0), (5, 6), (2, 3), (5, 0), (0, 6)]:
            ty, tx = y + dy, x + dx
            if 0 <= ty < 6 and 0 <= tx < 7:
                want = torch.exp(-(f[0, :, y, x] - f[0, :, ty, tx]).abs().mean())
            else:
                want = torch.tensor(0.0, dtype=torch.float64)
            torch.testing.assert_close(out[0, k, y, x], want)


def test_affinity_noncontiguous():
    base = torch.randn(2, 9, 14, 6, dtype=torch.float32)
    f = base.permute(0, 3, 1, 2)[:, ::2]  # (2, 3, 9, 14), not contiguous
    assert not f.is_contiguous()
    torch.testing.assert_close(ops.affinity(f, 5), ops.affinity(f.contiguous(), 5), rtol=0, atol=0)


def test_affinity_gradcheck():
    f = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops.affinity(t, 3), (f,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_affinity_backward_matches_reference(dtype):
    f = torch.randn(2, 7, 9, 11, dtype=dtype)
    g = torch.randn(2, pair_count(5), 9, 11, dtype=dtype)
    grads = []
    for fn in (ops.affinity, reference.affinity):
        x = f.clone().requires_grad_()
        (fn(x, 5) * g).sum().backward()
        grads.append(x.grad)
    tol = dict(rtol=1e-4, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[0], grads[1], **tol)


def test_affinity_subgradient_at_ties_is_zero():
    """|u| has subgradient sign(0) = 0 at u = 0, as torch.abs: tied channels of
    a pair pass no gradient through it."""
    f = torch.randint(0, 2, (1, 4, 7, 8)).double()  # many exact ties
    g = torch.randn(1, pair_count(3), 7, 8, dtype=torch.float64)
    grads = []
    for fn in (ops.affinity, reference.affinity):
        x = f.clone().requires_grad_()
        (fn(x, 3) * g).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-14)
    x = torch.full((1, 3, 5, 5), 0.7, dtype=torch.float64, requires_grad=True)
    ops.affinity(x, 3).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@needs_compiled
def test_affinity_double_backward_raises():
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(ops.affinity(x, 2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="second-order"):
        grad.sum().backward()


@pytest.mark.parametrize("features, radius, exc, match", [
    (torch.randn(2, 3, 4), 5, ValueError, "features must be a 4-D"),
    (torch.randint(0, 3, (1, 2, 4, 4)), 5, TypeError, "features on cpu"),
    (torch.randn(1, 2, 4, 4, dtype=torch.float16), 5, TypeError, "features on cpu"),
    (torch.randn(1, 0, 4, 4), 5, ValueError, "D >= 1"),
    (torch.randn(1, 2, 4, 4), 0, ValueError, "radius"),
    ([[1.0]], 5, TypeError, "features must be a torch.Tensor"),
])
def test_affinity_bad_inputs(features, radius, exc, match):
    with pytest.raises(exc, match=match):
        ops.affinity(features, radius)


# ----------------------------------------------------------------- random walk

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("border", ["all", "psa"])
@pytest.mark.parametrize("size", [(48, 48), (23, 37)])
def test_random_walk_matches_dense(size, border, dtype):
    shape = (2, 21) + size
    cam, aff = make_inputs(*shape, 5, dtype)
    out = ops.random_walk(cam, aff, 5, beta=8.0, n_steps=256, border=border)
    assert out.dtype == dtype and out.shape == cam.shape
    assert rel_err(out, dense_truth(shape, 5, 8.0, 256, border, 0)) <= TOL[dtype]


@pytest.mark.parametrize("border", ["all", "psa"])
@pytest.mark.parametrize("radius, size", [(2, (16, 19)), (8, (21, 18)), (1, (5, 6))])
def test_random_walk_other_radii(radius, size, border):
    shape = (2, 5) + size
    cam, aff = make_inputs(*shape, radius, torch.float32, seed=radius)
    out = ops.random_walk(cam, aff, radius, beta=8.0, n_steps=256, border=border)
    assert rel_err(out, dense_truth(shape, radius, 8.0, 256, border, radius)) <= 1e-4


@pytest.mark.parametrize("border", ["all", "psa"])
@pytest.mark.parametrize("n_steps, beta", [(1, 8.0), (2, 8.0), (7, 10.0), (37, 3.5)])
def test_random_walk_few_steps(n_steps, beta, border):
    shape = (2, 21, 12, 15)
    cam, aff = make_inputs(*shape, 5, torch.float64, seed=3)
    out = ops.random_walk(cam, aff, 5, beta=beta, n_steps=n_steps, border=border)
    assert rel_err(out, dense_truth(shape, 5, beta, n_steps, border, 3)) <= 1e-12
    assert not torch.allclose(out, cam)  # the walk moved something


@pytest.mark.parametrize("batch, channels", [(1, 1), (1, 3), (2, 21)])
def test_random_walk_both_cpu_parallel_paths(batch, channels):
    """The CPU kernel steps rows in parallel (a barrier per step) when there
    are fewer than 2 (image, channel) planes per thread, else whole planes
    without barriers: (1, 1) takes the first path, (2, 21) the second (up to
    21 threads)."""
    shape = (batch, channels, 19, 22)
    cam, aff = make_inputs(*shape, 5, torch.float64, seed=9)
    out = ops.random_walk(cam, aff, 5, n_steps=40, border="psa")
    assert rel_err(out, dense_truth(shape, 5, 8.0, 40, "psa", 9)) <= 1e-12


def test_random_walk_zero_steps_is_a_copy():
    cam, aff = make_inputs(2, 3, 6, 7, 5, torch.float32)
    out = ops.random_walk(cam, aff, 5, n_steps=0)
    assert torch.equal(out, cam) and out.data_ptr() != cam.data_ptr()


@pytest.mark.parametrize("border", ["all", "psa"])
@pytest.mark.parametrize("size", [(3, 20), (20, 2), (4, 4), (1, 1), (1, 9), (9, 8)])
def test_random_walk_images_smaller_than_radius(size, border):
    shape = (2, 4) + size
    cam, aff = make_inputs(*shape, 5, torch.float32, seed=5)
    out = ops.random_walk(cam, aff, 5, n_steps=256, border=border)
    assert rel_err(out, dense_truth(shape, 5, 8.0, 256, border, 5)) <= 1e-4


def test_random_walk_psa_band_is_identity_when_it_covers_the_image():
    """With W < 2 * radius - 1 every source is in PSA's band: T = identity."""
    cam, aff = make_inputs(1, 3, 10, 8, 5, torch.float32)
    torch.testing.assert_close(ops.random_walk(cam, aff, 5, border="psa"), cam, rtol=0, atol=0)
    assert not torch.allclose(ops.random_walk(cam, aff, 5, border="all"), cam)


def test_random_walk_noncontiguous():
    cam, aff = make_inputs(2, 6, 17, 13, 5, torch.float32, seed=7)
    expected = ops.random_walk(cam, aff, 5, n_steps=50)
    cam_cl = cam.contiguous(memory_format=torch.channels_last)
    big = torch.zeros(2, 12, 17, 13)
    big[:, ::2] = cam
    cam_strided = big[:, ::2]
    aff_t = aff.transpose(2, 3).contiguous().transpose(2, 3)
    for c, a in [(cam_cl, aff), (cam_strided, aff_t), (cam, aff_t)]:
        assert not (c.is_contiguous() and a.is_contiguous())
        torch.testing.assert_close(ops.random_walk(c, a, 5, n_steps=50), expected, rtol=0, atol=0)


def test_random_walk_empty():
    cam, aff = make_inputs(0, 3, 5, 5, 5, torch.float32)
    assert ops.random_walk(cam, aff, 5).shape == (0, 3, 5, 5)
    cam, aff = make_inputs(2, 0, 5, 5, 5, torch.float32)
    assert ops.random_walk(cam, aff, 5).shape == (2, 0, 5, 5)


def psa_style_matrix(aff, radius, beta):
    """PSA's matrix from its cropped index construction, written from the rule
    in SPEC.md ("Border detail"): sources are the pixels of rows 0..H-radius
    and columns radius-1..W-radius, each paired with source + offset."""
    p, h, w = aff.shape
    m = radius - 1
    index = torch.arange(h * w).view(h, w)
    src = index[:h - m, m:w - m].reshape(-1)
    a = torch.zeros(h * w, h * w, dtype=aff.dtype)
    for k, (dy, dx) in enumerate(ops.pair_offsets(radius).tolist()):
        dst = index[dy:dy + h - m, m + dx:m + dx + w - 2 * m].reshape(-1)
        vals = aff[k][:h - m, m:w - m].reshape(-1)
        a[src, dst] = vals
        a[dst, src] = vals
    a += torch.eye(h * w, dtype=aff.dtype)
    a = a ** beta
    return a / a.sum(0, keepdim=True)


@pytest.mark.parametrize("radius, size", [(5, (14, 17)), (3, (9, 6)), (5, (5, 9))])
def test_psa_border_is_psa_index_construction(radius, size):
    _, aff = make_inputs(1, 1, *size, radius, torch.float64, seed=11)
    torch.testing.assert_close(reference.transition_matrix(aff[0], radius, 8.0, "psa"),
                               psa_style_matrix(aff[0], radius, 8.0), rtol=1e-14, atol=0)


@pytest.mark.parametrize("border", ["all", "psa"])
def test_sparse_reference_matches_dense(border):
    shape = (2, 3, 11, 14)
    cam, aff = make_inputs(*shape, 5, torch.float64, seed=13)
    out = reference.random_walk(cam, aff, 5, 8.0, 64, border)
    assert rel_err(out, dense_truth(shape, 5, 8.0, 64, border, 13)) <= 1e-12


@needs_compiled
def test_fallback_to_reference(monkeypatch):
    cam, aff = make_inputs(2, 3, 9, 10, 5, torch.float64, seed=17)
    kernel = ops.random_walk(cam, aff, 5, n_steps=30, border="psa")
    monkeypatch.setattr(_backend, "has_kernel", lambda op, device: False)
    monkeypatch.setattr(_backend, "_warned", set())
    with pytest.warns(BackendWarning, match="random_walk"):
        fallback = ops.random_walk(cam, aff, 5, n_steps=30, border="psa")
    torch.testing.assert_close(fallback, kernel, rtol=1e-12, atol=0)


def test_random_walk_not_differentiable():
    cam, aff = make_inputs(1, 2, 6, 6, 5, torch.float32)
    with pytest.raises(RuntimeError, match="not differentiable"):
        ops.random_walk(cam.requires_grad_(), aff, 5)
    with torch.no_grad():
        ops.random_walk(cam, aff.requires_grad_(), 5)


@needs_compiled
def test_random_walk_op_backward_raises():
    cam, aff = make_inputs(1, 2, 6, 6, 5, torch.float32)
    out = torch.ops.wsss_fast.random_walk(cam.requires_grad_(), aff, 5, 8.0, 3, "all")
    with pytest.raises(RuntimeError, match="not differentiable"):
        out.sum().backward()


def _bad(**change):
    cam, aff = make_inputs(2, 3, 6, 7, 5, torch.float32)
    return changed(dict(cam=cam, aff=aff, radius=5, beta=8.0, n_steps=4, border="all"), change)


BAD_WALK = [
    (dict(radius=4), ValueError, "aff must have shape .* for radius 4"),
    (dict(aff=lambda a: a["aff"][:, :20]), ValueError, "aff must have shape"),
    (dict(aff=lambda a: a["aff"][:, :, :5]), ValueError, "aff must have shape"),
    (dict(aff=lambda a: a["aff"][:1]), ValueError, "aff must have shape"),
    (dict(aff=lambda a: with_value(a["aff"], (0, 3, 2, 2), -0.5)), ValueError, "aff must be >= 0"),
    (dict(aff=lambda a: with_value(a["aff"], (1, 0, 0, 0), float("nan"))), ValueError,
     "aff must be finite"),
    (dict(cam=lambda a: with_value(a["cam"], (0, 1, 2, 3), float("nan"))), ValueError,
     "cam must be finite"),
    (dict(cam=lambda a: with_value(a["cam"], (0, 1, 2, 3), float("inf"))), ValueError,
     "cam must be finite"),
    (dict(aff=lambda a: a["aff"].double()), TypeError, "aff must have the dtype of cam"),
    (dict(aff=lambda a: a["aff"].to("meta")), ValueError, "aff must be on the device of cam"),
    (dict(cam=lambda a: a["cam"][0]), ValueError, "cam must be a 4-D"),
    (dict(cam=lambda a: a["cam"].half(), aff=lambda a: a["aff"].half()), TypeError, "cam on cpu"),
    (dict(cam=[[0.0]]), TypeError, "cam must be a torch.Tensor"),
    (dict(beta=0.0), ValueError, "beta"),
    (dict(beta=float("nan")), ValueError, "beta"),
    (dict(n_steps=-1), ValueError, "n_steps"),
    (dict(n_steps=2.0), ValueError, "n_steps"),
    (dict(border="PSA"), ValueError, "border"),
    (dict(radius=0), ValueError, "radius"),
]


@pytest.mark.parametrize("change, exc, match", BAD_WALK)
def test_random_walk_bad_inputs(change, exc, match):
    with pytest.raises(exc, match=f"random_walk: .*{match}"):
        ops.random_walk(**_bad(**change))


@needs_compiled
@pytest.mark.parametrize("change, match", [
    (dict(radius=4), "aff must have shape"),
    (dict(aff=lambda a: a["aff"].double()), "aff must have the dtype of cam"),
    (dict(beta=-1.0), "beta must be finite and > 0"),
    (dict(n_steps=-2), "n_steps must be >= 0"),
    (dict(border="none"), "border must be"),
    (dict(radius=17, aff=lambda a: a["aff"]), "radius must be in"),
])
def test_random_walk_op_checks(change, match):
    a = _bad(**change)
    with pytest.raises(RuntimeError, match=f"random_walk: {match}"):
        torch.ops.wsss_fast.random_walk(a["cam"], a["aff"], a["radius"], a["beta"],
                                        a["n_steps"], a["border"])


@needs_compiled
def test_affinity_op_checks():
    f = torch.randn(1, 2, 5, 5)
    with pytest.raises(RuntimeError, match="affinity: features must have D >= 1"):
        torch.ops.wsss_fast.affinity(torch.randn(1, 0, 5, 5), 3)
    out = torch.ops.wsss_fast.affinity(f, 3)
    with pytest.raises(RuntimeError, match="affinity_backward: grad_out must have shape"):
        torch.ops.wsss_fast.affinity_backward(out[:, :5], f, out, 3)
    with pytest.raises(RuntimeError, match="affinity_backward: out must have"):
        torch.ops.wsss_fast.affinity_backward(out, f, out.double(), 3)


# --------------------------------------------------------------------- opcheck

@needs_compiled
def test_opcheck_affinity():
    f = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.wsss_fast.affinity.default, (f, 3))
    out = torch.ops.wsss_fast.affinity(f.detach(), 3)
    g = torch.randn_like(out)
    torch.library.opcheck(torch.ops.wsss_fast.affinity_backward.default,
                          (g, f.detach(), out, 3))


@needs_compiled
@pytest.mark.parametrize("border", ["all", "psa"])
def test_opcheck_random_walk(border):
    cam, aff = make_inputs(2, 3, 9, 10, 5, torch.float32)
    torch.library.opcheck(torch.ops.wsss_fast.random_walk.default,
                          (cam, aff, 5, 8.0, 16, border))


# ------------------------------------------------------------------------ CUDA
# The CUDA kernels are float32; their ground truth is the float64 CPU result.

@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("radius", [2, 5, 8])
def test_cuda_affinity_matches_cpu(radius):
    f = torch.randn(2, 32, 23, 19, dtype=torch.float64)
    g = torch.randn(2, pair_count(radius), 23, 19, dtype=torch.float64)
    fc = f.clone().requires_grad_()
    cpu = ops.affinity(fc, radius)
    (cpu * g).sum().backward()
    x = f.float().cuda().requires_grad_()
    out = ops.affinity(x, radius)
    (out * g.float().cuda()).sum().backward()
    torch.testing.assert_close(out.double().cpu(), cpu.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double().cpu(), fc.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("border", ["all", "psa"])
@pytest.mark.parametrize("shape, radius, n_steps", [
    ((2, 21, 48, 48), 5, 256), ((1, 21, 63, 47), 5, 256), ((2, 5, 21, 18), 8, 256),
    ((2, 4, 3, 20), 5, 256), ((2, 21, 12, 15), 5, 1), ((2, 21, 12, 15), 5, 2),
    ((3, 7, 16, 19), 2, 33)])
def test_cuda_random_walk_matches_dense(shape, radius, n_steps, border):
    cam, aff = make_inputs(*shape, radius, torch.float32, seed=21)
    out = ops.random_walk(cam.cuda(), aff.cuda(), radius, n_steps=n_steps, border=border)
    truth = dense_truth(shape, radius, 8.0, n_steps, border, 21)
    assert rel_err(out.cpu(), truth) <= 1e-4


@pytest.mark.cuda
@requires_cuda
def test_cuda_random_walk_large_batch_matches_cpu():
    """Enough pixels that the weights no longer fit in shared memory (global
    weights path); the float64 CPU kernel is the ground truth."""
    cam, aff = make_inputs(10, 2, 128, 128, 5, torch.float64, seed=23)
    cpu = ops.random_walk(cam, aff, 5, n_steps=64)
    out = ops.random_walk(cam.float().cuda(), aff.float().cuda(), 5, n_steps=64)
    assert rel_err(out.cpu(), cpu) <= 1e-4


@pytest.mark.cuda
@requires_cuda
def test_cuda_zero_steps_noncontiguous_and_opcheck():
    cam, aff = make_inputs(2, 6, 17, 13, 5, torch.float32, seed=7)
    cam, aff = cam.cuda(), aff.cuda()
    assert torch.equal(ops.random_walk(cam, aff, 5, n_steps=0), cam)
    expected = ops.random_walk(cam, aff, 5, n_steps=20)
    cam_cl = cam.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ops.random_walk(cam_cl, aff, 5, n_steps=20), expected,
                               rtol=0, atol=0)
    torch.library.opcheck(torch.ops.wsss_fast.random_walk.default, (cam, aff, 5, 8.0, 16, "psa"))
    f = torch.randn(2, 3, 6, 7, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.wsss_fast.affinity.default, (f, 3))
    with pytest.raises(ValueError, match="aff must be on the device of cam"):
        ops.random_walk(cam, aff.cpu(), 5)
    with pytest.raises(TypeError, match="cam on cuda must be one of float32"):
        ops.random_walk(cam.double(), aff.double(), 5)


@pytest.mark.parametrize("n_steps", [63, 64, 65, 129, 300])
@pytest.mark.parametrize("border", ["all", "psa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_walk_in_interruptible_chunks_equals_one_call(n_steps, border, dtype):
    """ops.random_walk runs STEPS_PER_CALL (64) steps per operator call (so
    that Ctrl-C is seen between calls); bit for bit the same as one call."""
    cam, aff = make_inputs(2, 3, 19, 23, 5, dtype=dtype, seed=n_steps)
    whole = torch.ops.wsss_fast.random_walk(cam, aff, 5, 8.0, n_steps, border)
    assert torch.equal(ops.random_walk(cam, aff, 5, 8.0, n_steps, border), whole)


@requires_cuda
@pytest.mark.cuda
def test_random_walk_in_chunks_equals_one_call_cuda():
    cam, aff = (t.cuda() for t in make_inputs(2, 3, 33, 29, 5, dtype=torch.float32, seed=3))
    whole = torch.ops.wsss_fast.random_walk(cam, aff, 5, 8.0, 200, "all")
    assert torch.equal(ops.random_walk(cam, aff, 5, 8.0, 200, "all"), whole)


# The child restores Python's Ctrl-C handler: a process started in the background by a
# non-interactive shell (e.g. `make test &`) inherits SIGINT ignored, and Python then installs
# no KeyboardInterrupt handler at all.
WALK_FOREVER = """
import signal
import torch
from wsss_fast import ops
signal.signal(signal.SIGINT, signal.default_int_handler)
cam, aff = torch.rand(1, 21, 64, 64), torch.rand(1, ops.pair_offsets(5).shape[0], 64, 64)
print("walking", flush=True)
try:
    ops.random_walk(cam, aff, 5, 8.0, 10 ** 9)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def test_a_long_random_walk_stops_on_ctrl_c():
    import signal
    import subprocess
    import sys
    import time

    if not _backend.has_kernel("random_walk", "cpu"):
        pytest.skip("the compiled kernel is the uninterruptible part")
    walk = subprocess.Popen([sys.executable, "-c", WALK_FOREVER], stdout=subprocess.PIPE, text=True)
    try:
        assert walk.stdout.readline().strip() == "walking"
        time.sleep(1.0)
        walk.send_signal(signal.SIGINT)
        out, _ = walk.communicate(timeout=30)
    finally:
        walk.kill()
    assert "interrupted" in out
