"""Did a classifier learn? A check on the training loss, for users whose
data a configuration may not suit.

A multi-label classifier trained with the mean per-class binary
cross-entropy (``multilabel_soft_margin_loss``) can always reach the loss of
the best constant prediction, each class's frequency in the training labels,
without looking at the images: the mean over classes of the binary entropy
of the frequencies (nats). :func:`check_learning` compares the last epoch's
mean training loss with it. A ratio near 1 means the network predicts the
class priors: its CAMs carry no localisation and every later stage writes
background. Ratios measured on the demo data (2000 training images): 0.95
to 0.98 for the scratch CNNs of the earlier demo (ten classes; validation
mAP about 0.36, chance about 0.2), 0.54 to 0.68 for pretrained
EfficientNet-Lite0 classifiers on the present five classes (validation mAP
0.80 and more).
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np

# The largest loss / prior-loss ratio at which a classifier counts as learned.
LEARNED_RATIO = 0.85


class NotLearnedWarning(UserWarning):
    """A classifier's training loss stayed near that of predicting the class priors."""


def prior_loss(labels: np.ndarray) -> float:
    """Mean over classes of the binary entropy (nats) of each class's
    frequency in ``labels``, (N, C) multi-hot: the lowest mean per-class
    binary cross-entropy a constant prediction reaches. Classes present in
    every image or in none contribute 0."""
    labels = np.asarray(labels, dtype=np.float64)
    if labels.ndim != 2 or labels.shape[0] == 0 or labels.shape[1] == 0:
        raise ValueError(f"prior_loss: labels must be a non-empty (N, C) array, got shape {labels.shape}")
    p = labels.mean(axis=0)
    entropy = np.zeros_like(p)
    inside = (p > 0) & (p < 1)
    q = p[inside]
    entropy[inside] = -(q * np.log(q) + (1 - q) * np.log1p(-q))
    return float(entropy.mean())


def last_epoch_loss(log_path: str | os.PathLike) -> float:
    """The mean training loss of the last epoch in a Trainer's log.jsonl:
    ``loss_parent`` where the loss has more terms (SC-CAM's sub-category
    loss), else ``loss``."""
    last = None
    with open(log_path) as f:
        for line in f:
            record = json.loads(line)
            if record.get("event") == "epoch":
                last = record
    if last is None:
        raise ValueError(f"{log_path} records no finished epoch")
    return float(last.get("loss_parent", last["loss"]))


def check_learning(log_path: str | os.PathLike, labels: np.ndarray, *, what: str = "train-cls",
                   out: str | os.PathLike | None = None) -> dict:
    """Compares the last epoch's training loss (``log_path``) with the
    prior loss of ``labels`` (:func:`prior_loss`). Returns ``{"loss",
    "prior_loss", "ratio", "learned"}``, writes it as JSON to ``out`` when
    given, and issues a :class:`NotLearnedWarning` naming ``what`` when the
    ratio exceeds :data:`LEARNED_RATIO`."""
    from .storage import write_text_atomic

    loss, prior = last_epoch_loss(log_path), prior_loss(labels)
    ratio = loss / prior if prior > 0 else math.inf
    result = {"loss": loss, "prior_loss": prior, "ratio": ratio, "learned": ratio <= LEARNED_RATIO}
    if out is not None:
        write_text_atomic(Path(out), json.dumps(result, indent=1) + "\n")
    if not result["learned"]:
        warnings.warn(
            f"{what}: the classifier has hardly learned: its last epoch's training loss {loss:.3f} is "
            f"{ratio:.2f} x {prior:.3f}, the loss of predicting each class's frequency without looking "
            f"at the image (learned: <= {LEARNED_RATIO}). Its CAMs will localise little and later stages "
            "will label most pixels background. Try a pretrained backbone (--backbone efficientnet_lite0 "
            "--weights imagenet), more epochs or another learning rate.", NotLearnedWarning, stacklevel=2)
    return result
