"""wsss_fast.learning: the class-prior loss and the did-it-learn check."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss_fast.learning import LEARNED_RATIO, NotLearnedWarning, check_learning, last_epoch_loss, prior_loss


def random_labels(seed: int, n: int = 400, c: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((n, c)) < rng.uniform(0.05, 0.6, size=c)).astype(np.float32)


@pytest.mark.parametrize("seed", range(3))
def test_prior_loss_is_the_loss_of_the_best_constant_prediction(seed):
    labels = random_labels(seed)
    target = torch.from_numpy(labels).double()
    freq = target.mean(0)
    best = F.multilabel_soft_margin_loss(torch.logit(freq).expand_as(target), target).item()
    assert prior_loss(labels) == pytest.approx(best, rel=1e-9)
    for shift in (-0.3, 0.2):  # any other constant does worse
        other = F.multilabel_soft_margin_loss((torch.logit(freq) + shift).expand_as(target), target).item()
        assert other > best


def test_prior_loss_edge_cases():
    always_never = np.array([[1, 0], [1, 0], [1, 0]])
    assert prior_loss(always_never) == 0.0
    assert prior_loss(np.array([[1], [0]])) == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="labels"):
        prior_loss(np.zeros((0, 3)))


def write_log(path, losses, key="loss"):
    with open(path, "w") as f:
        f.write(json.dumps({"event": "start"}) + "\n")
        for epoch, loss in enumerate(losses):
            f.write(json.dumps({"event": "step", "epoch": epoch, "loss": 9.0}) + "\n")
            terms = {"loss": loss} if key == "loss" else {"loss": loss + 1, key: loss}  # total > parent
            f.write(json.dumps({"event": "epoch", "epoch": epoch, **terms}) + "\n")


def test_a_classifier_stuck_at_the_priors_is_reported(tmp_path):
    labels = random_labels(0)
    prior = prior_loss(labels)
    log = tmp_path / "log.jsonl"
    write_log(log, [prior * 1.1, prior * 0.97], key="loss_parent")  # SC-CAM logs loss_parent
    assert last_epoch_loss(log) == pytest.approx(prior * 0.97)
    with pytest.warns(NotLearnedWarning, match=r"round 1: the classifier has hardly learned.*0\.97 x"):
        result = check_learning(log, labels, what="round 1", out=tmp_path / "learning.json")
    assert result["learned"] is False and result["ratio"] == pytest.approx(0.97)
    assert json.loads((tmp_path / "learning.json").read_text()) == result


def test_a_classifier_that_learned_is_quiet(tmp_path, recwarn):
    labels = random_labels(1)
    log = tmp_path / "log.jsonl"
    write_log(log, [prior_loss(labels) * (LEARNED_RATIO - 0.01)])
    result = check_learning(log, labels)
    assert result["learned"] is True
    assert not [w for w in recwarn if issubclass(w.category, NotLearnedWarning)]


def test_a_log_without_epochs_is_an_error(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"event": "start"}) + "\n")
    with pytest.raises(ValueError, match="no finished epoch"):
        last_epoch_loss(log)
