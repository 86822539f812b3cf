"""Saliency maps without ground truth (make-saliency, OpenCV's classical
static saliency) and their evaluation (eval-saliency: max and adaptive
F-measure with beta^2 = 0.3, MAE), on their own and in the pipeline."""
from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
from PIL import Image

from wsss_fast.cli import main
from wsss_fast.data.voc import VOCRoot
from wsss_fast.errors import MissingDependencyError, UsageError
from wsss_fast.eval import SaliencyMetrics, f_measure, saliency_histogram
from wsss_fast.outputs import LOCK_FILE, PROVENANCE_FILE
from wsss_fast.stages.labels import load_saliency
from wsss_fast.storage import save_label_png

from wsss_fast.stages.saliency import METHODS, make_saliency, normalise, saliency_map


def _has_opencv_saliency() -> bool:
    try:
        import cv2
    except ImportError:
        return False
    return hasattr(cv2, "saliency")


# the "test" extra installs it; without it only the tests that make maps are skipped
needs_opencv = pytest.mark.skipif(not _has_opencv_saliency(),
                                  reason="needs opencv-contrib-python-headless (the saliency extra)")

H, W = 40, 56  # not square, so that a transposed map would show


def scene(rng: np.random.Generator, top: int, left: int, size: int = 14) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) RGB: a bright square on a flat, slightly noisy background,
    and its (H, W) mask: class 1 inside, a 1-pixel void band, 0 outside."""
    image = np.full((H, W, 3), 70, np.int64)
    image[top:top + size, left:left + size] = (230, 200, 180)
    image = np.clip(image + rng.integers(-5, 6, image.shape), 0, 255).astype(np.uint8)
    mask = np.zeros((H, W), np.uint8)
    mask[top - 1:top + size + 1, left - 1:left + size + 1] = 255
    mask[top:top + size, left:left + size] = 1
    return image, mask


@pytest.fixture
def voc(tmp_path):
    """A VOC root of three such scenes (JPEG images, palette masks, train split)."""
    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = []
    for i, (top, left) in enumerate([(8, 10), (20, 30), (12, 36)]):
        image, mask = scene(rng, top, left)
        name = f"img{i}"
        Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        save_label_png(root / "SegmentationClass" / f"{name}.png", mask)
        names.append(name)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(names) + "\n")
    return root


@needs_opencv
@pytest.mark.parametrize("method", list(METHODS))
def test_a_bright_object_on_a_flat_background_is_salient(method):
    image, mask = scene(np.random.default_rng(1), 12, 20)
    saliency = saliency_map(image, method)
    assert saliency.shape == (H, W) and saliency.dtype == np.uint8
    assert saliency.min() == 0 and saliency.max() == 255  # min-max normalised
    inside, outside = saliency[mask == 1].astype(float), saliency[mask == 0].astype(float)
    assert inside.mean() > outside.mean() + 20, (inside.mean(), outside.mean())
    # an object pixel beats a background pixel in most pairs (AUC; 0.79 and 0.87 measured)
    pairs = inside[:, None] - outside[None]
    assert (pairs > 0).mean() + 0.5 * (pairs == 0).mean() > 0.7


def test_normalise_stretches_to_the_byte_range_and_zeroes_a_constant_map():
    assert normalise(np.array([[0.5, 1.0], [0.75, 0.5]])).tolist() == [[0, 255], [128, 0]]
    assert normalise(np.full((3, 2), 0.7)).tolist() == [[0, 0]] * 3
    assert normalise(np.array([[np.nan, 1.0], [2.0, 3.0]])).tolist() == [[0, 0], [128, 255]]


@needs_opencv
@pytest.mark.parametrize("method", list(METHODS))
def test_make_saliency_writes_grey_pngs_at_image_size(voc, tmp_path, method, capsys):
    out = tmp_path / "sal"
    assert main(["make-saliency", "--voc", str(voc), "--split", "train", "--out", str(out), "--method", method,
                 "--workers", "2", "--no-progress"]) == 0
    assert f"make-saliency ({method}): 3 written, 0 already done" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE) == [
        "img0.png", "img1.png", "img2.png", PROVENANCE_FILE]  # no temporary files
    for name in ("img0", "img1", "img2"):
        with Image.open(out / f"{name}.png") as png:
            assert png.format == "PNG" and png.mode == "L" and png.size == (W, H)
        values = load_saliency(out / f"{name}.png")
        assert values.shape == (H, W) and values.min() == 0 and values.max() == 255
        image = np.array(Image.open(voc / "JPEGImages" / f"{name}.jpg").convert("RGB"))
        assert np.array_equal(values, saliency_map(image, method))
    assert json.loads((out / PROVENANCE_FILE).read_text())["settings"]["method"] == method


@needs_opencv
def test_make_saliency_resumes_and_refuses_another_method(voc, tmp_path, monkeypatch):
    import wsss_fast.stages.saliency as stage

    out, root = tmp_path / "sal", VOCRoot(voc)
    names = root.split("train")
    first = make_saliency(root, names, out, method="spectral-residual", workers=1, progress=False)
    assert (first["written"], first["skipped"]) == (3, 0)
    before = (out / "img0.png").read_bytes()
    (out / "img1.png").unlink()
    (out / "img2.png").write_bytes((out / "img2.png").read_bytes()[:20])  # truncated by a crash
    computed = []
    real = stage.saliency_map
    monkeypatch.setattr(stage, "saliency_map", lambda image, method: (computed.append(1), real(image, method))[1])
    again = make_saliency(root, names, out, method="spectral-residual", workers=1, progress=False)
    assert (again["written"], again["skipped"]) == (2, 1) and len(computed) == 2
    assert (out / "img0.png").read_bytes() == before
    assert load_saliency(out / "img2.png").shape == (H, W)
    with pytest.raises(UsageError, match="holds the outputs of another make-saliency run"):
        make_saliency(root, names, out, method="fine-grained", workers=1, progress=False)


def test_missing_opencv_is_a_one_line_error(voc, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 raises ImportError
    assert main(["make-saliency", "--voc", str(voc), "--split", "train", "--out", str(tmp_path / "s"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install opencv-contrib-python-headless" in err
    assert not (tmp_path / "s").exists()  # stopped before creating anything
    monkeypatch.setitem(sys.modules, "cv2", types.ModuleType("cv2"))  # OpenCV without the contrib modules
    with pytest.raises(MissingDependencyError, match="no contrib saliency module: pip install opencv-contrib"):
        saliency_map(np.zeros((4, 4, 3), np.uint8))


@pytest.mark.parametrize("argv, message", [
    (["make-saliency", "--method", "itti"], "argument --method: invalid choice: 'itti'"),
    (["make-saliency", "--workers", "0"], "argument --workers: must be at least 1"),
    (["make-saliency", "--voc", "{tmp}/nowhere"], "--voc: VOC root"),
    (["make-saliency", "--split", "nosuch"], "--split nosuch: missing split list"),
    (["eval-saliency", "--saliency", "{tmp}/nowhere"], "--saliency {tmp}/nowhere is not a directory"),
    (["eval-saliency", "--saliency", "{tmp}", "--out", "{tmp}"], "argument --out: {tmp} is a folder"),
])
def test_bad_arguments_are_named(voc, tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    defaults = {"--voc": str(voc), "--split": "train"}
    if argv[0] == "make-saliency":
        defaults["--out"] = str(tmp_path / "out")
    else:
        defaults["--saliency"] = str(tmp_path)
    for flag, value in defaults.items():
        if flag not in argv:
            argv += [flag, value]
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.replace("{tmp}", str(tmp_path)) in err


# ---- the metrics, on arrays small enough to work out by hand ----

# gt: 2 foreground pixels (saliency 200, 100), 3 background (10, 160, 0), one void pixel
GT = np.array([[0, 1, 1], [0, 0, 255]], np.uint8)
SALIENCY = np.array([[10, 200, 100], [160, 0, 0]], np.uint8)


def scores_of(*pairs) -> dict:
    metrics = SaliencyMetrics()
    for saliency, gt in pairs:
        metrics.update(saliency, gt)
    return metrics.scores()


def test_f_measure_matches_a_hand_computed_curve():
    s = scores_of((SALIENCY, GT))
    # salient where > t:  t < 10: P 2/4, R 1;  10 <= t < 100: P 2/3, R 1;  100 <= t < 160: P 1/2, R 1/2;
    # 160 <= t < 200: P 1, R 1/2 (the best: 1.3 * 0.5 / (0.3 + 0.5) = 0.8125);  t >= 200: nothing salient
    def f(p, r):
        return 1.3 * p * r / (0.3 * p + r)

    curve = np.array(s["curve"]["f"])
    assert curve[0] == pytest.approx(f(0.5, 1)) and curve[50] == pytest.approx(f(2 / 3, 1))
    assert curve[120] == pytest.approx(f(0.5, 0.5)) and curve[199] == pytest.approx(f(1, 0.5)) and curve[200] == 0
    assert s["max_f"] == pytest.approx(0.8125) and s["max_f_threshold"] == 160
    assert (s["precision"], s["recall"]) == (1.0, 0.5)
    # adaptive: 2 x mean of all 6 values (460 / 6) = 153.3, salient where >= 153.3: 200 and 160
    assert (s["adaptive_precision"], s["adaptive_recall"]) == (0.5, 0.5)
    assert s["adaptive_f"] == pytest.approx(0.5)
    # MAE over the 5 non-void pixels: (10 + 160 + 0 + 55 + 155) / 255 / 5
    assert s["mae"] == pytest.approx(380 / 255 / 5)
    assert (s["pixels"], s["foreground_pixels"], s["num_images"], s["beta2"]) == (5, 2, 1, 0.3)
    assert float(f_measure(0.0, 0.0)) == 0.0


def test_perfect_and_inverted_maps():
    fg = (GT != 0) & (GT != 255)
    perfect = scores_of((np.where(fg, 255, 0).astype(np.uint8), GT))
    assert (perfect["max_f"], perfect["adaptive_f"], perfect["mae"]) == (1.0, 1.0, 0.0)
    inverted = scores_of((np.where(fg, 0, 255).astype(np.uint8), GT))
    assert inverted["max_f"] == 0.0 and inverted["adaptive_f"] == 0.0 and inverted["mae"] == 1.0


def test_void_pixels_are_ignored_and_pixels_are_pooled_over_images():
    other = SALIENCY.copy()
    other[1, 2] = 255  # the void pixel
    a, b = scores_of((SALIENCY, GT)), scores_of((other, GT))
    assert a["curve"] == b["curve"] and a["mae"] == b["mae"] and a["pixels"] == b["pixels"] == 5
    assert np.array_equal(saliency_histogram(SALIENCY, GT), saliency_histogram(other, GT))
    # two images pool their pixels: the curve and MAE of the pair are those of one image holding both
    second_saliency = np.array([[250, 30, 90], [5, 40, 220]], np.uint8)
    second_gt = np.array([[2, 0, 0], [0, 255, 3]], np.uint8)
    pooled = scores_of((SALIENCY, GT), (second_saliency, second_gt))
    joined = scores_of((np.hstack([SALIENCY, second_saliency]), np.hstack([GT, second_gt])))
    assert pooled["curve"] == joined["curve"] and pooled["max_f"] == joined["max_f"]
    assert pooled["mae"] == pytest.approx(joined["mae"]) and pooled["num_images"] == 2


def test_metric_input_errors():
    with pytest.raises(ValueError, match="shape"):
        SaliencyMetrics().update(SALIENCY, GT[:, :2])
    with pytest.raises(ValueError, match="outside 0..255"):
        SaliencyMetrics().update(SALIENCY.astype(np.int32) + 100, GT)
    empty = scores_of((SALIENCY, np.zeros_like(GT)))  # no foreground: recall undefined
    assert np.isnan(empty["max_f"]) and empty["max_f_threshold"] is None


@needs_opencv
def test_eval_saliency_command(voc, tmp_path, capsys):
    perfect = tmp_path / "perfect"
    perfect.mkdir()
    for name in ("img0", "img1", "img2"):
        mask = np.array(Image.open(voc / "SegmentationClass" / f"{name}.png"))
        Image.fromarray(np.where(mask == 1, 255, 0).astype(np.uint8), mode="L").save(perfect / f"{name}.png")
    out = tmp_path / "res" / "eval.json"
    assert main(["eval-saliency", "--voc", str(voc), "--split", "train", "--saliency", str(perfect),
                 "--out", str(out), "--no-progress"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.count("\n") == 0 and "max F 100.00%" in line and "MAE 0.0000" in line and "3 images" in line
    result = json.loads(out.read_text())
    assert result["max_f"] == 1.0 and result["mae"] == 0.0 and result["beta2"] == 0.3
    assert result["f_at_saliency_threshold"] == {"threshold": 50, "f": 1.0, "precision": 1.0, "recall": 1.0}
    assert "F at > 50 (DRS's rule) 100.00%" in line
    assert len(result["curve"]["f"]) == 256 and result["split"] == "train"

    sal = tmp_path / "sal"
    assert main(["make-saliency", "--voc", str(voc), "--split", "train", "--out", str(sal), "--no-progress"]) == 0
    assert main(["eval-saliency", "--voc", str(voc), "--split", "train", "--saliency", str(sal),
                 "--out", str(out), "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert 0.5 < result["max_f"] < 1 and 0 < result["mae"] < 0.5  # a bright square is easy, not perfect

    (sal / "img1.png").unlink()
    assert main(["eval-saliency", "--voc", str(voc), "--split", "train", "--saliency", str(sal),
                 "--no-progress"]) == 2
    assert "missing saliency map 'img1.png'" in capsys.readouterr().err


# ---- in the pipeline ----

SALIENCY_CONFIG = """
train_split: train
stages:
  train-cls: {method: cam, backbone: scratch, backbone_option: {width: 4}, epochs: 1, crop: 32,
              resize_long: [32, 40], batch_size: 4, num_workers: 0}
  make-cam: {scales: [1], workers: 0}
  make-saliency: {method: spectral-residual}
  eval-saliency: {}
  eval-cam: {saliency: "@make-saliency"}
  make-labels: {saliency: "@make-saliency"}
  eval-labels: {}
"""


@needs_opencv
def test_pipeline_make_saliency_eval_saliency_and_eval_cam_with_it(tmp_path, capsys):
    from wsss_fast.data.demo import make_demo_data

    make_demo_data(tmp_path / "data", n_train=8, n_val=0, size=32, progress=False)
    config = tmp_path / "c.yaml"
    config.write_text(SALIENCY_CONFIG)
    out = tmp_path / "out"
    common = ["run", str(config), f"voc={tmp_path / 'data'}", f"out={out}"]
    assert main(common + ["--check"]) == 0
    lines = {line.split("]")[0][1:]: line for line in capsys.readouterr().out.splitlines()}
    assert list(lines)[:5] == ["train-cls", "make-cam", "make-saliency", "eval-saliency", "eval-cam"]
    assert f"--saliency {out / 'make-saliency'}" in lines["eval-cam"]
    assert f"--saliency {out / 'make-saliency'}" in lines["make-labels"]
    assert f"--out {out / 'eval-saliency' / 'eval.json'}" in lines["eval-saliency"]

    assert main(common) == 0
    printed = capsys.readouterr().out
    assert len(list((out / "make-saliency").glob("*.png"))) == 8
    summary = json.loads((out / "summary.json").read_text())
    rows = {row["name"]: row for row in summary["table"]}
    assert list(rows) == ["Saliency max F", "CAM", "CAM pseudo labels"]
    saliency = rows["Saliency max F"]
    assert saliency["metric"] == "max_f" and saliency["miou"] is None
    assert saliency["value"] == json.loads((out / "eval-saliency" / "eval.json").read_text())["max_f"]
    assert 0 < saliency["value"] <= 1
    assert rows["CAM"]["metric"] == "miou" and rows["CAM"]["value"] == rows["CAM"]["miou"]
    cam = json.loads((out / "eval-cam" / "eval.json").read_text())
    assert cam["saliency"] == str(out / "make-saliency") and rows["CAM"]["miou"] == pytest.approx(cam["miou"])
    assert "max F" in printed and "Saliency max F" in printed

    # everything done: skipped; another saliency method makes the saliency stage and those after it stale
    assert main(common) == 0
    again = json.loads((out / "summary.json").read_text())
    assert all(s["skipped"] for s in again["stages"]) and again["table"] == summary["table"]
    capsys.readouterr()
    assert main(common + ["stages.make-saliency.method=fine-grained"]) == 2
    assert "stage make-saliency finished before with other options" in capsys.readouterr().err
