"""Tests of wsss_fast.ops.dense_crf (issue 17).

Ground truths:

* the exact mean field (``reference.dense_crf_exact``): pydensecrf's model
  with the true Gaussian kernels as dense N x N float64 matrices, on tiny
  photo crops. The permutohedral lattice only approximates the kernels, so
  neither pydensecrf nor ours equals it; with the mild settings of
  EXACT_CASES pydensecrf's marginals stay within the stated bound of it
  (measured: 0.064 and 0.022), and ours are held to the same bound, which
  kernels 1.5x too narrow miss (0.22 and 0.075).
* pydensecrf itself (skipped without it): 500 x 375 photo crops, PSA and
  DeepLab presets, 21 and 2 labels: at least 99.9% of the pixels with the same
  argmax and a max abs marginal difference <= 1e-4 (measured: 1e-6 to 1e-5).
* the lattice reference (``reference.dense_crf``), the same algorithm in
  float32 PyTorch: max abs difference <= 2e-5.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from PIL import Image

from bad_args import changed, with_value
from wsss_fast import BackendWarning, _backend, ops, reference
from wsss_fast.data.demo import SKLEARN_PHOTOS, load_photos
from wsss_fast.ops.dense_crf import PRESETS, CRFParams

COMPILED = _backend.has_kernel("dense_crf", "cpu")
needs_compiled = pytest.mark.skipif(not COMPILED, reason="compiled extension not built")
HAS_CUDA = torch.cuda.is_available() and _backend.has_kernel("dense_crf", "cuda")
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and the CUDA build")

EXACT_CASES = [(CRFParams(5, 2, 1, 6, 20, 1), 0.07), (CRFParams(10, 3, 0.5, 8, 15, 0.5), 0.025)]
EXACT_SHAPES = [(12, 16, 3), (9, 13, 2), (16, 11, 4), (14, 14, 3), (7, 19, 5)]


@functools.lru_cache(maxsize=None)
def photos():
    return load_photos()[:len(SKLEARN_PHOTOS)]  # the two 427 x 640 colour photographs


def scene(h, w, k, seed, grid=(3, 3)):
    """A (3, h, w) uint8 photo crop and (k, h, w) smooth softmax maps."""
    rng = np.random.default_rng(seed)
    photo = photos()[seed % 2]
    ph, pw = photo.shape[:2]
    ch = min(ph, max(h, int(rng.uniform(0.3, 1.0) * ph)))
    cw = min(pw, max(w, int(ch * w / h)))
    y, x = rng.integers(0, ph - ch + 1), rng.integers(0, pw - cw + 1)
    img = np.array(Image.fromarray(photo[y:y + ch, x:x + cw]).resize((w, h), Image.BILINEAR))
    logits = torch.from_numpy(rng.normal(0, 3, (1, k) + grid).astype(np.float32))
    probs = torch.softmax(torch.nn.functional.interpolate(logits, size=(h, w), mode="bilinear",
                                                          align_corners=False)[0], 0)
    return torch.from_numpy(img).permute(2, 0, 1).contiguous(), probs.contiguous()


def batch(shapes_seed, h, w, k):
    imgs, probs = zip(*(scene(h, w, k, s) for s in shapes_seed))
    return torch.stack(imgs), torch.stack(probs)


def params_of(p: CRFParams) -> tuple:
    return (p.iterations, p.gaussian_sxy, p.gaussian_compat, p.bilateral_sxy, p.bilateral_srgb,
            p.bilateral_compat)


def pydensecrf_marginals(image: torch.Tensor, probs: torch.Tensor, p: CRFParams) -> np.ndarray:
    densecrf = pytest.importorskip("pydensecrf.densecrf")
    k, h, w = probs.shape
    crf = densecrf.DenseCRF2D(w, h, k)
    crf.setUnaryEnergy(np.ascontiguousarray(
        -np.log(np.clip(probs.numpy(), 1e-5, 1.0)).reshape(k, -1)))
    crf.addPairwiseGaussian(sxy=p.gaussian_sxy, compat=p.gaussian_compat)
    crf.addPairwiseBilateral(sxy=p.bilateral_sxy, srgb=p.bilateral_srgb,
                             rgbim=np.ascontiguousarray(image.permute(1, 2, 0).numpy()),
                             compat=p.bilateral_compat)
    return np.asarray(crf.inference(p.iterations), dtype=np.float32).reshape(k, h, w)


# ------------------------------------------------------- exact mean field

@pytest.mark.parametrize("params, bound", EXACT_CASES)
def test_close_to_the_exact_mean_field(params, bound):
    worst, narrow = 0.0, 0.0
    too_narrow = CRFParams(params.iterations, params.gaussian_sxy / 1.5, params.gaussian_compat,
                           params.bilateral_sxy / 1.5, params.bilateral_srgb / 1.5,
                           params.bilateral_compat)
    for seed, (h, w, k) in enumerate(EXACT_SHAPES):
        image, probs = scene(h, w, k, seed)
        exact = reference.dense_crf_exact(image[None], probs[None], None, *params_of(params))[0]
        ours = ops.dense_crf(image[None], probs[None], params)[0]
        worst = max(worst, (ours.double() - exact).abs().max().item())
        narrow = max(narrow, (ops.dense_crf(image[None], probs[None], too_narrow)[0].double()
                              - exact).abs().max().item())
        torch.testing.assert_close(exact.sum(0), torch.ones(h, w, dtype=torch.float64))
    print(f"max |ours - exact| = {worst:.4f} (bound {bound}); 1.5x narrower kernels: {narrow:.4f}")
    assert worst <= bound < narrow


@pytest.mark.parametrize("params, bound", EXACT_CASES)
def test_pydensecrf_is_held_to_the_same_bound(params, bound):
    worst = 0.0
    for seed, (h, w, k) in enumerate(EXACT_SHAPES):
        image, probs = scene(h, w, k, seed)
        exact = reference.dense_crf_exact(image[None], probs[None], None, *params_of(params))[0]
        theirs = pydensecrf_marginals(image, probs, params)
        worst = max(worst, np.abs(theirs - exact.numpy()).max())
    print(f"max |pydensecrf - exact| = {worst:.4f} (bound {bound})")
    assert worst <= bound


# ------------------------------------------------------------- pydensecrf

@pytest.mark.parametrize("k", [21, 2])
@pytest.mark.parametrize("preset", ["psa", "deeplab"])
def test_matches_pydensecrf_at_voc_size(preset, k):
    image, probs = scene(375, 500, k, seed=k, grid=(12, 16))
    theirs = pydensecrf_marginals(image, probs, PRESETS[preset])
    ours = ops.dense_crf(image[None], probs[None], preset)[0].numpy()
    agree = (ours.argmax(0) == theirs.argmax(0)).mean()
    diff = np.abs(ours - theirs).max()
    print(f"{preset} K={k}: argmax agreement {agree:.6f}, max abs difference {diff:.2e}")
    assert agree >= 0.999 and diff <= 1e-4
    assert (theirs.argmax(0) != probs.numpy().argmax(0)).mean() > 0.01  # the CRF did something


# ------------------------------------------------------ lattice reference

@pytest.mark.parametrize("preset", ["psa", "deeplab"])
@pytest.mark.parametrize("shape", [(2, 23, 37, 4), (1, 40, 9, 1), (3, 17, 17, 6)])
def test_kernel_matches_lattice_reference(shape, preset):
    b, h, w, k = shape
    image, probs = batch(range(b), h, w, k)
    out = ops.dense_crf(image, probs, preset)
    assert out.shape == probs.shape and out.dtype == torch.float32 and out.is_contiguous()
    ref = reference.dense_crf(image, probs, None, *params_of(PRESETS[preset]))
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-5)
    torch.testing.assert_close(out.sum(1), torch.ones(b, h, w), rtol=0, atol=1e-5)


@pytest.mark.parametrize("h, w", [(1, 1), (1, 7), (6, 1), (2, 2), (3, 200)])
def test_odd_shapes(h, w):
    image, probs = batch([0, 1], h, w, 3)
    out = ops.dense_crf(image, probs, "deeplab")
    torch.testing.assert_close(out, reference.dense_crf(image, probs, None,
                                                        *params_of(PRESETS["deeplab"])),
                               rtol=0, atol=2e-5)


def test_single_label_is_certain():
    image, probs = scene(9, 11, 1, 0)
    out = ops.dense_crf(image[None], probs[None] * 0.3, "psa")
    assert torch.equal(out, torch.ones_like(out))


def test_zero_iterations_normalise_the_clipped_scores():
    image, probs = scene(10, 12, 4, 3)
    probs[0, :2] = 0  # clipped to 1e-5
    out = ops.dense_crf(image[None], probs[None], CRFParams(0, 3, 3, 80, 13, 10))[0]
    clipped = probs.clamp(1e-5, 1)
    torch.testing.assert_close(out, clipped / clipped.sum(0), rtol=1e-6, atol=1e-7)


def test_noncontiguous_inputs():
    image, probs = batch([1, 2], 19, 23, 5)
    expected = ops.dense_crf(image, probs, "psa")
    image_cl = image.contiguous(memory_format=torch.channels_last)
    big = torch.zeros(2, 10, 19, 23)
    big[:, ::2] = probs
    probs_strided = big[:, ::2]
    image_t = image.transpose(2, 3).contiguous().transpose(2, 3)
    for img, p in [(image_cl, probs), (image_t, probs_strided)]:
        assert not (img.is_contiguous() and p.is_contiguous())
        assert torch.equal(ops.dense_crf(img, p, "psa"), expected)


def test_mixed_label_counts_in_one_batch():
    """Each image equals its own run on its first num_labels channels; the
    padding channels are ignored (any values) and come out 0."""
    counts = [3, 5, 1, 4]
    image, probs = batch(range(4), 15, 18, 5)
    padded = probs.clone()
    for b, k in enumerate(counts):
        padded[b, k:] = torch.rand(5 - k, 15, 18)
    out = ops.dense_crf(image, padded, "psa", num_labels=torch.tensor(counts))
    for b, k in enumerate(counts):
        alone = ops.dense_crf(image[b:b + 1], probs[b:b + 1, :k], "psa")[0]
        assert torch.equal(out[b, :k], alone)
        assert torch.equal(out[b, k:], torch.zeros(5 - k, 15, 18))
    ref = reference.dense_crf(image, padded, torch.tensor(counts), *params_of(PRESETS["psa"]))
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-5)


@needs_compiled
def test_result_does_not_depend_on_threads_or_batching():
    """Images in parallel (B >= threads), one image with every step parallel,
    and one thread give identical bits."""
    image, probs = batch(range(3), 41, 53, 6)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.dense_crf(image, probs, "deeplab")
        torch.set_num_threads(max(threads, 2))
        many = ops.dense_crf(image, probs, "deeplab")
        alone = torch.cat([ops.dense_crf(image[b:b + 1], probs[b:b + 1], "deeplab")
                           for b in range(3)])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many) and torch.equal(one, alone)


def test_strong_potts_weights_stay_finite():
    """Energy gaps beyond exp's range (compat 1000) give 0/1 marginals, no NaN."""
    image, probs = scene(12, 14, 3, 5)
    out = ops.dense_crf(image[None], probs[None], CRFParams(5, 3, 1000, 10, 13, 1000))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.sum(1), torch.ones(1, 12, 14), rtol=0, atol=1e-5)


def test_empty_batch():
    image, probs = torch.zeros(0, 3, 4, 5, dtype=torch.uint8), torch.zeros(0, 2, 4, 5)
    assert ops.dense_crf(image, probs).shape == (0, 2, 4, 5)


@needs_compiled
def test_fallback_to_reference(monkeypatch):
    image, probs = batch([4], 13, 17, 3)
    kernel = ops.dense_crf(image, probs, "psa")
    monkeypatch.setattr(_backend, "has_kernel", lambda op, device: False)
    monkeypatch.setattr(_backend, "_warned", set())
    with pytest.warns(BackendWarning, match="dense_crf"):
        fallback = ops.dense_crf(image, probs, "psa")
    torch.testing.assert_close(fallback, kernel, rtol=0, atol=2e-5)


def test_not_differentiable():
    image, probs = scene(6, 7, 2, 0)
    with pytest.raises(RuntimeError, match="not differentiable"):
        ops.dense_crf(image[None], probs[None].requires_grad_())
    with torch.no_grad():
        ops.dense_crf(image[None], probs[None].requires_grad_())


@needs_compiled
def test_op_backward_raises():
    image, probs = scene(6, 7, 2, 0)
    out = torch.ops.wsss_fast.dense_crf(image[None], probs[None].requires_grad_(), None,
                                        *params_of(PRESETS["psa"]))
    with pytest.raises(RuntimeError, match="not differentiable"):
        out.sum().backward()


@needs_compiled
@pytest.mark.parametrize("num_labels", [None, torch.tensor([2, 3])])
def test_opcheck(num_labels):
    image, probs = batch([0, 1], 9, 11, 3)
    torch.library.opcheck(torch.ops.wsss_fast.dense_crf.default,
                          (image, probs, num_labels, *params_of(PRESETS["psa"])))


# ------------------------------------------------------------ bad inputs

def _bad(**change):
    image, probs = batch([0, 1], 6, 7, 3)
    return changed(dict(image=image, probs=probs, params="psa", num_labels=None), change)


BAD = [
    (dict(image=lambda a: a["image"].float()), TypeError, "image must be uint8"),
    (dict(image=lambda a: a["image"][:, :2]), ValueError, "image must be a 4-D .B, 3, H, W."),
    (dict(image=lambda a: a["image"][0]), ValueError, "image must be a 4-D"),
    (dict(probs=lambda a: a["probs"].double()), TypeError, "probs must be float32"),
    (dict(probs=lambda a: a["probs"][:, :, :5]), ValueError, "probs must have shape"),
    (dict(probs=lambda a: a["probs"][:1]), ValueError, "probs must have shape"),
    (dict(probs=lambda a: a["probs"][:, :0]), ValueError, "K >= 1"),
    (dict(image=lambda a: a["image"][:, :, :0], probs=lambda a: a["probs"][:, :, :0]),
     ValueError, "H >= 1 and W >= 1"),
    (dict(probs=lambda a: with_value(a["probs"], (0, 1, 2, 3), 1.5)), ValueError, r"in \[0, 1\]"),
    (dict(probs=lambda a: with_value(a["probs"], (1, 0, 0, 0), -0.1)), ValueError, r"in \[0, 1\]"),
    (dict(probs=lambda a: with_value(a["probs"], (1, 0, 0, 0), float("nan"))), ValueError,
     r"in \[0, 1\]"),
    (dict(probs=lambda a: a["probs"].to("meta")), ValueError, "probs must be on the device of image"),
    (dict(probs=[[0.5]]), TypeError, "probs must be a torch.Tensor"),
    (dict(num_labels=torch.tensor([1, 4])), ValueError, r"num_labels must be in \[1, K = 3\]"),
    (dict(num_labels=torch.tensor([0, 2])), ValueError, r"num_labels must be in \[1, K = 3\]"),
    (dict(num_labels=torch.tensor([1, 2, 3])), ValueError, r"num_labels must be a \(B,\)"),
    (dict(num_labels=torch.tensor([1.0, 2.0])), ValueError, r"num_labels must be a \(B,\)"),
    (dict(num_labels=[1, 2]), TypeError, "num_labels must be a torch.Tensor"),
    (dict(params="fast"), ValueError, "unknown CRF preset"),
    (dict(params=3), TypeError, "params must be a preset name or a CRFParams"),
    (dict(params=CRFParams(-1, 3, 3, 80, 13, 10)), ValueError, "iterations must be an int >= 0"),
    (dict(params=CRFParams(2.5, 3, 3, 80, 13, 10)), ValueError, "iterations must be an int"),
    (dict(params=CRFParams(10, 0, 3, 80, 13, 10)), ValueError, "gaussian_sxy must be a finite number > 0"),
    (dict(params=CRFParams(10, 3, 3, 80, -13, 10)), ValueError, "bilateral_srgb must be"),
    (dict(params=CRFParams(10, 3, 3, float("inf"), 13, 10)), ValueError, "bilateral_sxy must be"),
    (dict(params=CRFParams(10, 3, float("nan"), 80, 13, 10)), ValueError,
     "gaussian_compat must be a finite number"),
]


@pytest.mark.parametrize("change, exc, match", BAD)
def test_bad_inputs(change, exc, match):
    with pytest.raises(exc, match=f"dense_crf: .*{match}"):
        ops.dense_crf(**_bad(**change))


@needs_compiled
@pytest.mark.parametrize("change, match", [
    (dict(image=lambda a: a["image"].float()), "image must be uint8"),
    (dict(probs=lambda a: a["probs"][:, :, :5]), "probs must have shape"),
    (dict(probs=lambda a: a["probs"].double()), "probs must be float32"),
    (dict(probs=lambda a: a["probs"][:, :0]), "probs must have K >= 1"),
    (dict(num_labels=torch.tensor([1, 4])), r"num_labels must be in \[1, K = 3\]"),
    (dict(num_labels=torch.tensor([1, 2], dtype=torch.int32)), "num_labels must be int64"),
    (dict(params=CRFParams(-1, 3, 3, 80, 13, 10)), "iterations must be >= 0"),
    (dict(params=CRFParams(10, 3, 3, 0.0, 13, 10)), "bilateral_sxy must be finite and > 0"),
    (dict(params=CRFParams(10, 3, float("inf"), 80, 13, 10)), "gaussian_compat must be finite"),
    (dict(params=CRFParams(10, 1e-9, 3, 80, 13, 10)), "gaussian_sxy = 1e-09 is too small"),
    (dict(params=CRFParams(10, 3, 3, 1e-3, 1e-3, 10)),
     "bilateral_sxy = 0.001 and bilateral_srgb = 0.001 are too small for a 6 x 7 image"),
])
def test_op_checks(change, match):
    a = _bad(**change)
    p = a["params"] if isinstance(a["params"], CRFParams) else PRESETS[a["params"]]
    with pytest.raises(RuntimeError, match=f"dense_crf: {match}"):
        torch.ops.wsss_fast.dense_crf(a["image"], a["probs"], a["num_labels"], *params_of(p))


# ------------------------------------------------------------------ CUDA
# float32 on both devices; the CPU kernel is the ground truth.

@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("preset", ["psa", "deeplab"])
@pytest.mark.parametrize("shape", [(1, 375, 500, 21), (2, 375, 500, 2), (3, 37, 23, 4),
                                   (2, 1, 1, 3), (1, 6, 200, 40)])
def test_cuda_matches_cpu(shape, preset):
    b, h, w, k = shape
    image, probs = batch(range(b), h, w, k)
    cpu = ops.dense_crf(image, probs, preset)
    out = ops.dense_crf(image.cuda(), probs.cuda(), preset).cpu()
    agree = (out.argmax(1) == cpu.argmax(1)).double().mean().item()
    diff = (out - cpu).abs().max().item()
    print(f"{preset} {shape}: argmax agreement {agree:.6f}, max abs difference {diff:.2e}")
    assert agree >= 0.999 and diff <= 1e-4


@pytest.mark.cuda
@requires_cuda
def test_cuda_mixed_labels_deterministic_and_opcheck():
    counts = torch.tensor([3, 5, 1])
    image, probs = batch(range(3), 31, 29, 5)
    cpu = ops.dense_crf(image, probs, "psa", num_labels=counts)
    image, probs = image.cuda(), probs.cuda()
    first = ops.dense_crf(image, probs, "psa", num_labels=counts.cuda())
    again = ops.dense_crf(image, probs, "psa", num_labels=counts.cuda())
    assert torch.equal(first, again)
    torch.testing.assert_close(first.cpu(), cpu, rtol=0, atol=1e-4)
    assert torch.equal(first[2, 1:], torch.zeros(4, 31, 29, device="cuda"))
    torch.library.opcheck(torch.ops.wsss_fast.dense_crf.default,
                          (image, probs, counts.cuda(), *params_of(PRESETS["psa"])))
    with pytest.raises(ValueError, match="num_labels must be on the device of image"):
        ops.dense_crf(image, probs, num_labels=counts)
    image_cl = image.contiguous(memory_format=torch.channels_last)
    assert torch.equal(ops.dense_crf(image_cl, probs, "psa", num_labels=counts.cuda()), first)


@pytest.mark.cuda
@requires_cuda
def test_cuda_batch_split_into_groups():
    """More entries than one group holds (2^24 at 6 corners a pixel): the
    images are processed in several groups with the same result."""
    image, probs = batch(range(4), 600, 1800, 2)  # 6.5M entries per image
    out = ops.dense_crf(image.cuda(), probs.cuda(), "psa")
    for b in (0, 3):
        alone = ops.dense_crf(image[b:b + 1].cuda(), probs[b:b + 1].cuda(), "psa")
        assert torch.equal(out[b:b + 1], alone)
