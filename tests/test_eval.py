"""Evaluation against independent computations (sklearn, numpy argmax of the
padded CAM stack as IRN does)."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from wsss_fast.eval import (REFERENCE_THRESHOLDS, ConfusionMatrix, ThresholdSweep, cam_to_label,
                            parse_sweep, scores_from_confusion)
from wsss_fast.storage import ScoreMap

C = 6


def label_pairs(n=4, shape=(23, 31), seed=0):
    """Random (pred, gt) label maps: gt with a 255 band, classes 4 absent from
    both, class 5 only in the predictions."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        gt = rng.choice([0, 1, 2, 3], size=shape).astype(np.uint8)
        gt[:, 5:7] = 255
        pred = np.where(rng.random(shape) < 0.7, gt, rng.choice([0, 1, 2, 3, 5], size=shape))
        pred[gt == 255] = rng.choice([0, 1, 5], size=int((gt == 255).sum()))
        pairs.append((pred.astype(np.uint8), gt))
    return pairs


def independent_iou(conf):
    conf = conf.astype(np.float64)
    tp = np.diag(conf)
    denom = conf.sum(0) + conf.sum(1) - tp
    iou = np.array([tp[i] / denom[i] if denom[i] > 0 else np.nan for i in range(len(tp))])
    return iou, np.nanmean(iou)


def sklearn_confusion(pairs, void_as_background=True):
    preds, gts = [], []
    for pred, gt in pairs:
        keep = gt != 255
        p = pred[keep].astype(np.int64)
        if void_as_background:
            p[p == 255] = 0
        preds.append(p)
        gts.append(gt[keep])
    return confusion_matrix(np.concatenate(gts), np.concatenate(preds), labels=list(range(C)))


def test_confusion_iou_match_sklearn_with_void_and_absent_classes():
    pairs = label_pairs()
    cm = ConfusionMatrix(C)
    for pred, gt in pairs:
        cm.update(pred, gt)
    expected = sklearn_confusion(pairs)
    assert np.array_equal(cm.matrix.numpy(), expected)
    scores = cm.scores()
    iou, miou = independent_iou(expected)
    assert math.isnan(scores["iou"][4]) and scores["iou"][5] == 0.0
    np.testing.assert_allclose(scores["iou"], iou, equal_nan=True)
    assert scores["miou"] == pytest.approx(miou)
    assert scores["num_images"] == len(pairs)
    assert scores["pixel_accuracy"] == pytest.approx(np.trace(expected) / expected.sum())


def test_precision_recall_fscore_match_sklearn():
    pairs = label_pairs(seed=3)
    cm = ConfusionMatrix(C)
    for pred, gt in pairs:
        cm.update(pred, gt)
    gts = np.concatenate([gt[gt != 255] for _, gt in pairs])
    preds = np.concatenate([pred[gt != 255] for pred, gt in pairs])
    p, r, f, _ = precision_recall_fscore_support(gts, preds, labels=list(range(C)),
                                                 zero_division=np.nan)
    scores = cm.scores()
    present = [0, 1, 2, 3]  # classes 4 (absent) and 5 (never in gt) have undefined recall
    np.testing.assert_allclose(np.array(scores["precision"])[present], p[present])
    np.testing.assert_allclose(np.array(scores["recall"])[present], r[present])
    np.testing.assert_allclose(np.array(scores["fscore"])[present], f[present])


def test_streaming_equals_one_batch():
    pairs = label_pairs(n=6, seed=5)
    stream = ConfusionMatrix(C)
    for pred, gt in pairs:
        stream.update(pred, gt)
    batch = ConfusionMatrix(C)
    batch.update(np.stack([p for p, _ in pairs]), np.stack([g for _, g in pairs]))
    assert torch.equal(stream.matrix, batch.matrix)
    assert batch.num_images == 6


def test_void_prediction_background_or_excluded_with_coverage():
    pairs = label_pairs(seed=7)
    for pred, gt in pairs:
        pred[:3] = 255
    as_bg = ConfusionMatrix(C)
    excluded = ConfusionMatrix(C, void_pred="exclude")
    for pred, gt in pairs:
        as_bg.update(pred, gt)
        excluded.update(pred, gt)
    assert np.array_equal(as_bg.matrix.numpy(), sklearn_confusion(pairs))
    gts = np.concatenate([gt[(gt != 255) & (pred != 255)] for pred, gt in pairs])
    preds = np.concatenate([pred[(gt != 255) & (pred != 255)] for pred, gt in pairs])
    assert np.array_equal(excluded.matrix.numpy(), confusion_matrix(gts, preds, labels=list(range(C))))
    evaluated = sum(int((gt != 255).sum()) for _, gt in pairs)
    void = sum(int(((gt != 255) & (pred == 255)).sum()) for pred, gt in pairs)
    assert excluded.coverage == pytest.approx(1 - void / evaluated)
    assert as_bg.scores()["coverage"] == excluded.coverage


@pytest.mark.parametrize("bad, where", [(("pred", 6), "prediction holds value 6"),
                                        (("gt", 9), "ground truth holds value 9"),
                                        (("pred", 254), "prediction holds value 254")])
def test_out_of_range_values_are_errors(bad, where):
    pred, gt = label_pairs(n=1)[0]
    (pred if bad[0] == "pred" else gt)[1, 1] = bad[1]
    with pytest.raises(ValueError, match=where):
        ConfusionMatrix(C).update(pred, gt)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        ConfusionMatrix(C).update(np.zeros((3, 4)), np.zeros((4, 3)))


def test_perfect_prediction_scores_one():
    _, gt = label_pairs(n=1)[0]
    cm = ConfusionMatrix(C)
    cm.update(gt, gt)
    s = cm.scores()
    assert s["miou"] == 1.0 and s["pixel_accuracy"] == 1.0 and s["mean_fscore"] == 1.0


def test_empty_confusion_is_nan_not_an_error():
    s = scores_from_confusion(np.zeros((3, 3)))
    assert math.isnan(s["miou"]) and math.isnan(s["pixel_accuracy"])


def irn_cam_to_label(keys, cams, threshold):
    """IRN's rule: pad a constant threshold channel (float32) in front, argmax."""
    padded = np.concatenate([np.full((1, *cams.shape[1:]), threshold, dtype=np.float32),
                             cams.astype(np.float32)])
    return np.pad(np.asarray(keys), (1, 0))[np.argmax(padded, axis=0)]


def random_cams(seed, k=2, shape=(19, 27)):
    rng = np.random.default_rng(seed)
    keys = np.sort(rng.choice(np.arange(1, C), size=k, replace=False))
    # multiples of 0.05: many pixels tie with a threshold, where background must win
    cams = (rng.integers(0, 13, size=(k, *shape)) * 0.05).astype(np.float32)
    return ScoreMap(keys, cams)


def test_cam_to_label_matches_irn_argmax_including_ties():
    for seed in range(4):
        maps = random_cams(seed)
        for t in (0.0, 0.15, 0.2, 0.25, 0.6):
            assert np.array_equal(cam_to_label(maps, t), irn_cam_to_label(maps.keys, maps.data, t))
    empty = ScoreMap(np.zeros(0, dtype=np.int64), np.zeros((0, 3, 4), dtype=np.float32))
    assert (cam_to_label(empty, 0.0) == 0).all()


def test_sweep_equals_evaluating_each_threshold():
    rng = np.random.default_rng(11)
    thresholds = parse_sweep("0:0.6:0.05")
    sweep = ThresholdSweep(thresholds, C)
    data = []
    for seed in range(5):
        maps = random_cams(seed, k=int(rng.integers(0, 3)))
        gt = rng.integers(0, C, size=maps.data.shape[1:]).astype(np.uint8)
        gt[0] = 255
        sweep.update(maps, gt)
        data.append((maps, gt))
    for t, conf in zip(sweep.thresholds, sweep.confusions()):
        direct = ConfusionMatrix(C)
        for maps, gt in data:
            direct.update(irn_cam_to_label(maps.keys, maps.data, t), gt)
        assert torch.equal(conf, direct.matrix), t
    assert [r["threshold"] for r in sweep.scores()] == sorted(thresholds)


def test_parse_sweep_includes_stop_and_reference_values():
    values = parse_sweep("0:0.6:0.01")
    assert len(values) == 61 and values[0] == 0.0 and values[-1] == 0.6
    for t in REFERENCE_THRESHOLDS:
        assert t in values
    with pytest.raises(ValueError):
        parse_sweep("0:0.6")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_confusion_on_gpu_equals_cpu():
    pairs = label_pairs()
    cpu, gpu = ConfusionMatrix(C), ConfusionMatrix(C, device="cuda")
    for pred, gt in pairs:
        cpu.update(pred, gt)
        gpu.update(torch.from_numpy(pred).cuda(), torch.from_numpy(gt).cuda())
    assert torch.equal(cpu.matrix, gpu.matrix.cpu())
