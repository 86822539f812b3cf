"""wsss_fast.stages.sccam.subcategory_labels: SC-CAM sub-category labels from one
batched K-means over all parent classes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsss_fast import ops
from wsss_fast.stages.sccam import subcategory_labels


def image_data(n=240, classes=5, d=24, seed=0):
    """Pooled-feature-like data: non-negative features, multi-hot labels with
    one to three classes per image; the last class is never present."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, classes, dtype=torch.bool)
    labels[torch.arange(n), torch.randint(0, classes - 1, (n,), generator=g)] = True
    extra = torch.rand(n, classes - 1, generator=g) < 0.2
    labels[:, :-1] |= extra
    protos = torch.rand(classes, 3, d, generator=g) * 4
    which = torch.randint(0, 3, (n, classes), generator=g)
    feats = (labels[..., None] * protos[torch.arange(classes), which]).sum(1)
    return torch.relu(feats + 0.3 * torch.randn(n, d, generator=g)), labels


def test_multi_hot_layout_and_per_class_clustering():
    feats, labels = image_data()
    k = 4
    out = subcategory_labels(feats, labels, k=k, seed=7)
    n, c = labels.shape
    assert out.labels.shape == (n, c * k) and out.labels.dtype == labels.dtype
    sub = out.labels.view(n, c, k)
    # One sub-category per (image, parent class), none elsewhere.
    assert torch.equal(sub.sum(2), labels.long())
    for parent in range(c - 1):
        images = labels[:, parent].nonzero().flatten()
        alone = ops.kmeans(feats[images], k, groups=torch.full((len(images),), parent), seed=7,
                           num_groups=c)
        assert torch.equal(sub[images, parent].long().argmax(1), alone.labels)
        assert torch.equal(out.cluster_sizes[parent], torch.bincount(alone.labels, minlength=k))
        assert float(out.inertia[parent]) == float(alone.inertia[parent])
        assert int(out.n_iter[parent]) == int(alone.n_iter[parent])
    # The absent class.
    assert not out.labels[:, (c - 1) * k:].any()
    assert (out.cluster_sizes[c - 1] == 0).all() and float(out.inertia[c - 1]) == 0.0


def test_float_labels_and_normalisation():
    feats, labels = image_data(seed=1)
    out = subcategory_labels(feats, labels.float(), k=3, normalize=True)
    assert out.labels.dtype == torch.float32
    same = subcategory_labels(F.normalize(feats, dim=1), labels, k=3)
    assert torch.equal(out.labels.bool(), same.labels)
    assert torch.equal(out.inertia, same.inertia)
    raw = subcategory_labels(feats, labels, k=3)
    assert not torch.equal(raw.inertia, same.inertia)


def test_small_classes_do_not_fail():
    feats, labels = image_data(n=12, classes=4, seed=2)
    out = subcategory_labels(feats, labels, k=10)
    per_class = labels.sum(0)
    assert torch.equal(out.cluster_sizes.sum(1), per_class)
    assert torch.equal((out.cluster_sizes > 0).sum(1), per_class.clamp(max=10))


@pytest.mark.parametrize("features, labels, match", [
    (torch.zeros(4), torch.zeros(4, 2), "features must be a 2-D"),
    (torch.zeros(4, 3), torch.zeros(5, 2), "labels must be a 2-D"),
    (torch.zeros(4, 3), torch.zeros(4), "labels must be a 2-D"),
])
def test_bad_arguments(features, labels, match):
    with pytest.raises(ValueError, match=match):
        subcategory_labels(features, labels)
