"""SC-CAM sub-category labels (SPEC.md, "SC-CAM").

Reads and writes no files: it turns pooled features and image labels (in
memory) into sub-category labels; :mod:`wsss_fast.stages.classify` saves
them with each round.

Every round, SC-CAM clusters, for each parent class, the pooled features of
the images that contain the class into k sub-categories, and trains a second
head on the resulting (N_img, C * k) multi-hot labels, index parent * k +
cluster. :func:`subcategory_labels` does all classes with one
:func:`wsss_fast.ops.kmeans` call.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .. import ops


class SubcategoryLabels(NamedTuple):
    """Result of :func:`subcategory_labels` for N images, C classes, k clusters.

    labels: (N, C * k) multi-hot, dtype of the input labels; 1 at
        parent * k + cluster for every class of the image.
    cluster_sizes: (C, k) int64, images per sub-category.
    inertia: (C,) float64, K-means inertia per class (squared feature units;
        0 for a class no image has).
    n_iter: (C,) int64, Lloyd iterations of the best run per class.
    """

    labels: torch.Tensor
    cluster_sizes: torch.Tensor
    inertia: torch.Tensor
    n_iter: torch.Tensor


def subcategory_labels(features: torch.Tensor, labels: torch.Tensor, k: int = 10, *,
                       normalize: bool = False, n_init: int = 10, max_iter: int = 300,
                       tol: float = 1e-4, seed: int = 0,
                       init: str = "k-means++") -> SubcategoryLabels:
    """Sub-category labels of SC-CAM by K-means of each class's image features.

    Args:
        features: (N, D) globally pooled features of the N images (the
            reference uses the raw final features of the round's model).
        labels: (N, C) multi-hot image labels (bool, integer or float; an
            entry counts when it is non-zero), on the device of features.
        k: sub-categories per class (SC-CAM: 10).
        normalize: L2-normalise the features first (off by default, as the
            reference clusters raw features).
        n_init, max_iter, tol, seed, init: as in :func:`wsss_fast.ops.kmeans`
            (the reference's sklearn settings are n_init=10, max_iter=300,
            tol=1e-4, k-means++; set n_init explicitly, since sklearn >= 1.4
            changed its default).

    Returns:
        :class:`SubcategoryLabels`. A class with fewer than k images gives
        each distinct image a cluster of its own (see ops.kmeans); a class no
        image has gets no labels, sizes 0 and inertia 0.
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        raise ValueError("subcategory_labels: features must be a 2-D (N, D) tensor, got "
                         f"{_shape(features)}")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 2 or labels.shape[0] != features.shape[0]:
        raise ValueError(f"subcategory_labels: labels must be a 2-D (N, C) tensor with N = "
                         f"{features.shape[0]}, got {_shape(labels)}")
    if labels.device != features.device:
        raise ValueError(f"subcategory_labels: labels must be on the device of features "
                         f"({features.device}), got {labels.device}")
    num_classes = labels.shape[1]
    # Image-class pairs, ordered by class (the kernels then need no sort).
    image, parent = (labels != 0).T.nonzero(as_tuple=True)[::-1]
    x = F.normalize(features, dim=1) if normalize else features
    result = ops.kmeans(x[image], k, groups=parent, n_init=n_init, max_iter=max_iter, tol=tol,
                        seed=seed, init=init, num_groups=num_classes)
    sub = parent * k + result.labels
    multi_hot = torch.zeros(features.shape[0], num_classes * k, dtype=labels.dtype,
                            device=labels.device)
    multi_hot[image, sub] = 1
    sizes = torch.bincount(sub, minlength=num_classes * k).view(num_classes, k)
    return SubcategoryLabels(multi_hot, sizes, result.inertia, result.n_iter)


def _shape(t) -> str:
    return f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
