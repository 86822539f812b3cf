"""Dense CRF front end (wsss_fast.crf) on both backends: shapes and
probabilities, sharpening along image edges, the stream API equal to the
single-image one, the backends agreeing, what "auto" picks, and the error
without pydensecrf."""
import sys

import numpy as np
import pytest

from wsss_fast import _backend, crf

BACKENDS = ["wsss", pytest.param("pydensecrf", marks=pytest.mark.skipif(
    not crf._has_pydensecrf(), reason="pydensecrf not installed"))]


def edge_scene(h=48, w=64, edge=28, seed=0, k=2):
    """Dark left half, bright right half (a vertical edge at x = edge), and
    a blurred k-class map (classes 1.. share the right side) whose
    transition sits at x = edge + 5."""
    rng = np.random.default_rng(seed)
    image = np.where(np.arange(w) < edge, 40, 210).astype(np.float32)
    image = np.broadcast_to(image[None, :, None], (h, w, 3)) + rng.normal(0, 4, (h, w, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    right = 1 / (1 + np.exp(-(np.arange(w) - (edge + 5)) / 4.0))
    p1 = np.broadcast_to(right[None, :], (h, w))
    probs = np.stack([1 - p1] + [p1 / (k - 1)] * (k - 1)).astype(np.float32)
    truth = np.broadcast_to((np.arange(w) >= edge)[None, :], (h, w))
    return image, probs, truth


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("preset", ["psa", "deeplab"])
def test_output_is_a_probability_map_of_the_input_shape(preset, backend):
    image, probs, _ = edge_scene()
    q = crf.dense_crf(image, probs, preset, backend=backend, device="cpu")
    assert q.shape == probs.shape and q.dtype == np.float32
    assert (q >= 0).all() and (q <= 1).all()
    np.testing.assert_allclose(q.sum(axis=0), 1.0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_crf_sharpens_a_blurred_map_along_the_image_edge(backend):
    image, probs, truth = edge_scene()
    q = crf.dense_crf(image, probs, "psa", backend=backend, device="cpu")
    before = (probs.argmax(0) == truth).mean()
    after = (q.argmax(0) == truth).mean()
    assert before < 0.93 and after > 0.99
    # confident on both sides: the soft transition becomes a step at the edge
    assert np.abs(q[1] - truth).mean() < 0.5 * np.abs(probs[1] - truth).mean()


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_equals_one_at_a_time_in_order(backend):
    """Sizes and label counts vary along the stream: the wsss backend cuts it
    into same-size batches with padded labels."""
    scenes = [edge_scene(seed=s, edge=20 + 6 * s, k=2 + s % 2, h=48 if s < 3 else 40)
              for s in range(5)]
    images, probs = [s[0] for s in scenes], [s[1] for s in scenes]
    batch = crf.dense_crf_batch(images, probs, "deeplab", backend=backend, device="cpu", workers=2,
                                progress=False)
    for image, p, q in zip(images, probs, batch):
        assert q.shape == p.shape
        np.testing.assert_array_equal(q, crf.dense_crf(image, p, "deeplab", backend=backend,
                                                       device="cpu"))
    lazy = list(crf.imap_dense_crf(iter(zip(images, probs)), "deeplab", backend=backend,
                                   device="cpu", workers=1, batch_size=2, progress=False))
    for a, b in zip(lazy, batch):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not crf._has_pydensecrf(), reason="pydensecrf not installed")
@pytest.mark.parametrize("preset", ["psa", "deeplab"])
def test_backends_agree(preset):
    image, probs, _ = edge_scene(k=3, seed=4)
    ours = crf.dense_crf(image, probs, preset, backend="wsss", device="cpu")
    theirs = crf.dense_crf(image, probs, preset, backend="pydensecrf")
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)


def test_auto_backend(monkeypatch):
    compiled = _backend.has_kernel("dense_crf", "cpu")
    assert crf.resolve_backend("auto", "cpu") == ("wsss" if compiled or not crf._has_pydensecrf()
                                                  else "pydensecrf")
    monkeypatch.setattr(_backend, "has_kernel", lambda op, device: False)
    assert crf.resolve_backend("auto", "cpu") == ("pydensecrf" if crf._has_pydensecrf() else "wsss")
    monkeypatch.setattr(crf, "_has_pydensecrf", lambda: False)
    assert crf.resolve_backend("auto", "cpu") == "wsss"  # the reference, with a BackendWarning
    assert crf.resolve_backend("pydensecrf", "cpu") == "pydensecrf"
    with pytest.raises(ValueError, match="unknown CRF backend 'fast'"):
        crf.resolve_backend("fast")


def test_presets_are_the_spec_values():
    assert crf.PRESETS["psa"] == crf.CRFParams(10, 3, 3, 80, 13, 10)
    assert crf.PRESETS["deeplab"] == crf.CRFParams(10, 1, 3, 67, 3, 4)
    assert crf.PRESETS["irn"] == crf.CRFParams(10, 3, 3, 50, 5, 10)  # IRN's crf_inference_label
    with pytest.raises(ValueError, match="unknown CRF preset"):
        crf.resolve_params("fast")


def test_label_probs_give_pydensecrfs_label_unary():
    from pydensecrf.utils import unary_from_labels

    labels = np.random.default_rng(0).integers(0, 4, (9, 13))
    probs = crf.label_probs(labels, 4, 0.7)
    assert probs.shape == (4, 9, 13) and probs.dtype == np.float32
    np.testing.assert_allclose(-np.log(probs).reshape(4, -1),
                               unary_from_labels(labels, 4, gt_prob=0.7, zero_unsure=False), rtol=1e-6)
    for bad, message in [((labels, 1), "n_labels must be >= 2"), ((labels, 3), r"labels must be in \[0, 3\)"),
                         ((labels, 4, 1.0), r"gt_prob must be in \(0, 1\)")]:
        with pytest.raises(ValueError, match=message):
            crf.label_probs(*bad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_label_crf_is_irns_crf_inference_label(backend):
    """IRN's misc/imutils.py crf_inference_label written out with pydensecrf."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_labels

    image, probs, _ = edge_scene()
    labels = probs.argmax(0)
    h, w = labels.shape
    d = dcrf.DenseCRF2D(w, h, 2)
    d.setUnaryEnergy(unary_from_labels(labels, 2, gt_prob=0.7, zero_unsure=False))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.ascontiguousarray(image), compat=10)
    want = np.array(d.inference(10)).reshape(2, h, w)
    got = crf.dense_crf(image, crf.label_probs(labels, 2), "irn", backend=backend, device="cpu")
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert (got.argmax(0) != labels).any()  # the CRF moved the label edge


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_shapes_are_errors(backend):
    image, probs, _ = edge_scene()
    with pytest.raises(ValueError, match="probs must be"):
        crf.dense_crf(image, probs[:, :10], backend=backend, device="cpu")
    with pytest.raises(ValueError, match="image must be"):
        crf.dense_crf(image.astype(np.float32), probs, backend=backend, device="cpu")


def test_clear_error_without_pydensecrf(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    image, probs, _ = edge_scene()
    with pytest.raises(crf.MissingDependencyError, match="pip install pydensecrf2"):
        crf.dense_crf(image, probs, backend="pydensecrf")
    with pytest.raises(crf.MissingDependencyError, match="--crf-backend wsss"):
        list(crf.imap_dense_crf([(image, probs)], backend="pydensecrf", progress=False))
    assert crf.resolve_backend("auto", "cpu") == "wsss"
