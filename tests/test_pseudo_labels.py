"""Pseudo labels from CAMs: the threshold rule and DRS's saliency rule on
hand-made maps, the make-labels command, resume, errors, and eval on its
output."""
import json

import numpy as np
import pytest
from PIL import Image

from wsss_fast import cli
from wsss_fast.errors import DataError, UsageError
from wsss_fast.eval import cam_to_label
from wsss_fast.stages.labels import make_labels, saliency_labels
from wsss_fast.storage import ScoreMap, load_label_png, save_label_png, save_scores

# Threshold rule: classes 2 and 5; background 0.15 wins ties, the lower channel wins class ties.
THRESHOLD_KEYS = np.array([2, 5])
THRESHOLD_MAPS = np.array([[[0.1, 0.5, 0.3], [0.0, 0.15, 0.9]],
                           [[0.2, 0.4, 0.3], [0.1, 0.1, 0.95]]], dtype=np.float32)
THRESHOLD_LABEL = np.array([[5, 2, 2], [0, 0, 5]], dtype=np.uint8)

# Saliency rule: classes 3 and 1, stored in that order.
SALIENCY = np.array([[200, 200, 10, 200], [51, 50, 200, 0]], dtype=np.uint8)  # salient: > 50
SALIENCY_KEYS = np.array([3, 1])
SALIENCY_MAPS = np.array([[[0.95, 0.6, 0.0, 0.5], [0.0, 0.2, 0.3, 0.92]],      # class 3
                          [[0.95, 0.1, 0.95, 0.5], [0.19, 0.3, 0.95, 0.95]]],  # class 1
                         dtype=np.float32)
SALIENCY_LABEL = np.array([
    # two confident classes on a salient pixel: not a conflict (needs > 2), class 1 wins the tie;
    # 0.1 of class 1 is below alpha; background 1 beats 0.95; a 0.5 tie goes to class 1
    [1, 3, 0, 1],
    # 0.19 < alpha leaves a salient pixel with background -> 255; 50 is not salient -> background;
    # salient, class 1; background + two classes above 0.9 -> 255
    [255, 0, 1, 255]], dtype=np.uint8)


def test_threshold_rule_on_hand_made_maps():
    assert np.array_equal(cam_to_label(ScoreMap(THRESHOLD_KEYS, THRESHOLD_MAPS), 0.15), THRESHOLD_LABEL)


def test_saliency_rule_on_hand_made_maps():
    label = saliency_labels(ScoreMap(SALIENCY_KEYS, SALIENCY_MAPS), SALIENCY)
    assert np.array_equal(label, SALIENCY_LABEL)
    # a higher saliency threshold makes (1, 0) non-salient: background instead of 255
    assert saliency_labels(ScoreMap(SALIENCY_KEYS, SALIENCY_MAPS), SALIENCY, saliency_threshold=60)[1, 0] == 0
    # no classes: salient pixels are ignored, the rest is background
    empty = saliency_labels(ScoreMap(np.zeros(0, np.int64), np.zeros((0, 2, 4), np.float32)), SALIENCY)
    assert np.array_equal(empty, np.where(SALIENCY > 50, 255, 0))
    with pytest.raises(ValueError, match="saliency map is 3x2"):
        saliency_labels(ScoreMap(SALIENCY_KEYS, SALIENCY_MAPS), SALIENCY[:, :3])


@pytest.fixture
def cams(tmp_path):
    """Two images' CAM files and saliency maps, and their expected labels as a gt folder."""
    cam_dir, sal_dir, gt_dir = tmp_path / "cam", tmp_path / "sal", tmp_path / "gt"
    save_scores(cam_dir / "a.npz", SALIENCY_KEYS, SALIENCY_MAPS)
    save_scores(cam_dir / "b.npz", SALIENCY_KEYS, SALIENCY_MAPS[:, :, ::-1])
    for name, flip in (("a", False), ("b", True)):
        sal_dir.mkdir(exist_ok=True)
        Image.fromarray(SALIENCY[:, ::-1] if flip else SALIENCY).save(sal_dir / f"{name}.png")
        save_label_png(gt_dir / f"{name}.png", SALIENCY_LABEL[:, ::-1] if flip else SALIENCY_LABEL)
    return cam_dir, sal_dir, gt_dir


def test_make_labels_with_and_without_saliency(cams, tmp_path):
    cam_dir, sal_dir, _ = cams
    summary = make_labels(cam_dir, tmp_path / "sal_labels", saliency_dir=sal_dir, progress=False)
    assert summary["written"] == ["a", "b"] and summary["skipped"] == 0
    assert np.array_equal(load_label_png(tmp_path / "sal_labels" / "a.png"), SALIENCY_LABEL)
    assert np.array_equal(load_label_png(tmp_path / "sal_labels" / "b.png"), SALIENCY_LABEL[:, ::-1])
    make_labels(cam_dir, tmp_path / "thr_labels", threshold=0.4, names=["a"], progress=False)
    expected = np.array([[1, 3, 1, 1], [0, 0, 1, 1]], dtype=np.uint8)  # argmax over [0.4, class 1, class 3]
    assert np.array_equal(load_label_png(tmp_path / "thr_labels" / "a.png"), expected)
    assert not (tmp_path / "thr_labels" / "b.png").exists()


def test_make_labels_resumes_and_recomputes_damaged_labels(cams, tmp_path, capsys):
    cam_dir, _, _ = cams
    out = tmp_path / "labels"
    make_labels(cam_dir, out, progress=False)
    whole = (out / "b.png").read_bytes()
    (out / "a.png").unlink()
    summary = make_labels(cam_dir, out, progress=False)
    assert summary["written"] == ["a"] and summary["skipped"] == 1
    (out / "b.png").write_bytes(whole[:-20])  # truncated: no IEND chunk
    summary = make_labels(cam_dir, out, progress=False)
    assert summary["written"] == ["b"] and (out / "b.png").read_bytes() == whole
    assert "recomputed: b.png" in capsys.readouterr().err
    with pytest.raises(UsageError, match=r"another make-labels run \(threshold 0.15 -> 0.3\)"):
        make_labels(cam_dir, out, threshold=0.3, progress=False)


def test_make_labels_errors(cams, tmp_path):
    cam_dir, sal_dir, _ = cams
    (sal_dir / "b.png").unlink()
    with pytest.raises(DataError, match="missing saliency map 'b.png'"):
        make_labels(cam_dir, tmp_path / "out", saliency_dir=sal_dir, progress=False)
    Image.fromarray(SALIENCY[:, :3]).save(sal_dir / "b.png")
    with pytest.raises(DataError, match="b: saliency map is 3x2"):
        make_labels(cam_dir, tmp_path / "out", saliency_dir=sal_dir, progress=False)
    with pytest.raises(UsageError, match="empty"):
        make_labels(cam_dir, tmp_path / "out2", names=[], progress=False)
    with pytest.raises(DataError, match="not a directory"):
        make_labels(tmp_path / "nowhere", tmp_path / "out2", progress=False)
    save_scores(tmp_path / "bg" / "c.npz", [0], np.zeros((1, 2, 2)))
    with pytest.raises(DataError, match="c: CAM keys must be object classes"):
        make_labels(tmp_path / "bg", tmp_path / "out2", progress=False)


def test_make_labels_command_then_eval(cams, tmp_path, capsys):
    cam_dir, sal_dir, gt_dir = cams
    out = tmp_path / "labels"
    assert cli.main(["make-labels", "--cam", str(cam_dir), "--out", str(out), "--saliency", str(sal_dir),
                     "--no-progress"]) == 0
    assert "make-labels: 2 labels" in capsys.readouterr().out
    report = tmp_path / "eval.json"
    assert cli.main(["eval", "--pred", str(out), "--gt", str(gt_dir), "--json", str(report), "--no-plots",
                     "--no-progress"]) == 0
    assert json.loads(report.read_text())["miou"] == 1.0  # the gt is the expected labels (255 ignored)
