"""The command line end to end: make-demo-data, eval on its own ground truth
(mIoU 1) and on a shifted copy (the value sklearn gives), eval-cam, report,
and one-line errors."""
import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import confusion_matrix

from wsss_fast import cli
from wsss_fast.data import VOCRoot
from wsss_fast.storage import load_label_png, save_label_png, save_scores

NUM_CLASSES = 6  # demo: background + 5


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo dataset written by `python -m wsss_fast make-demo-data` (the
    console script's code path, without needing it installed)."""
    root = tmp_path_factory.mktemp("cli") / "demo"
    run = subprocess.run([sys.executable, "-m", "wsss_fast", "make-demo-data", str(root),
                          "--n-train", "6", "--n-val", "4", "--size", "64", "--no-progress"],
                         capture_output=True, text=True, cwd=os.getcwd())
    assert run.returncode == 0, run.stderr
    assert "6 train, 4 val" in run.stdout
    return root


def test_every_command_module_registers_itself():
    for module in cli.COMMAND_MODULES:
        assert callable(importlib.import_module(module).add_parser)
    parser = cli.build_parser()
    for argv in (["make-demo-data", "d"], ["eval", "--pred", "p", "--gt", "g"],
                 ["eval-cam", "--cam", "c", "--gt", "g"], ["report", "--voc", "v", "--out", "o"]):
        assert callable(parser.parse_args(argv).func)


def test_eval_on_its_own_ground_truth_is_one(demo, tmp_path, capsys):
    out = tmp_path / "eval.json"
    gt = demo / "SegmentationClass"
    assert cli.main(["eval", "--pred", str(gt), "--gt", str(gt), "--json", str(out),
                     "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert result["miou"] == 1.0 and result["num_images"] == 10
    assert len(result["iou"]) == NUM_CLASSES and result["class_names"][0] == "background"
    assert (tmp_path / "eval_iou.png").stat().st_size > 0
    assert "mean" in capsys.readouterr().out


def test_eval_on_a_shifted_copy_matches_sklearn(demo, tmp_path):
    gt_dir, pred_dir = demo / "SegmentationClass", tmp_path / "shifted"
    names = sorted(p.stem for p in gt_dir.glob("*.png"))
    gts, preds = [], []
    for name in names:
        gt = load_label_png(gt_dir / f"{name}.png")
        shifted = np.roll(gt, (3, -2), axis=(0, 1))  # keeps 255 bands: counted as background
        save_label_png(pred_dir / f"{name}.png", shifted)
        keep = gt != 255
        gts.append(gt[keep])
        preds.append(np.where(shifted == 255, 0, shifted)[keep])
    conf = confusion_matrix(np.concatenate(gts), np.concatenate(preds),
                            labels=list(range(NUM_CLASSES))).astype(np.float64)
    tp = np.diag(conf)
    denom = conf.sum(0) + conf.sum(1) - tp
    expected = np.mean(tp[denom > 0] / denom[denom > 0])

    out = tmp_path / "shifted.json"
    assert cli.main(["eval", "--pred", str(pred_dir), "--gt", str(gt_dir), "--json", str(out),
                     "--no-plots", "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert result["miou"] == pytest.approx(expected, abs=1e-12)
    assert 0.2 < result["miou"] < 0.95


def blurred_cams(voc, names, cam_dir):
    for name in names:
        mask = voc.load_mask(name)
        keys = [c for c in np.unique(mask) if c not in (0, 255)]
        cams = np.stack([ndimage.gaussian_filter((mask == c).astype(np.float32), 2) for c in keys])
        save_scores(cam_dir / f"{name}.npz", keys, cams / cams.max(axis=(1, 2), keepdims=True))


def test_eval_cam_sweep_json_and_plots(demo, tmp_path, capsys):
    voc = VOCRoot(demo)
    blurred_cams(voc, voc.split("train"), tmp_path / "cams")
    out = tmp_path / "cam.json"
    assert cli.main(["eval-cam", "--cam", str(tmp_path / "cams"), "--gt", str(demo / "SegmentationClass"),
                     "--sweep", "0:0.5:0.05", "--json", str(out), "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert result["num_images"] == 6 and 0 < result["miou"] <= 1
    assert len(result["sweep"]["thresholds"]) == 11
    assert result["miou"] == max(result["sweep"]["miou"]) == result["best"]["miou"]
    assert set(result["fixed"]) == {"0.15", "0.2", "0.25"}
    assert all(r["miou"] <= result["best"]["miou"] for r in result["fixed"].values())
    assert (tmp_path / "cam_sweep.png").is_file() and (tmp_path / "cam_iou.png").is_file()
    assert "best mIoU" in capsys.readouterr().out

    fixed = tmp_path / "fixed.json"
    assert cli.main(["eval-cam", "--cam", str(tmp_path / "cams"), "--gt", str(demo / "SegmentationClass"),
                     "--threshold", "0.2", "--json", str(fixed), "--no-plots", "--no-progress"]) == 0
    assert json.loads(fixed.read_text())["miou"] == pytest.approx(result["fixed"]["0.2"]["miou"])

    report = tmp_path / "report"
    assert cli.main(["report", "--voc", str(demo), "--split", "train", "--cam", str(tmp_path / "cams"),
                     "--pred", str(demo / "SegmentationClass"), "--eval-json", str(out),
                     "--out", str(report)]) == 0
    page = (report / "index.html").read_text()
    assert page.count('src="panels/') == 6 and "figures/cam_sweep.png" in page
    assert (report / "panels" / "train_000000.png").is_file()


def test_errors_are_one_line_without_traceback(demo, tmp_path):
    run = subprocess.run([sys.executable, "-m", "wsss_fast", "eval", "--pred",
                          str(demo / "SegmentationClass"), "--gt", str(tmp_path / "missing"),
                          "--no-progress"], capture_output=True, text=True, cwd=os.getcwd())
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert f"missing label map 'train_000000.png' in {tmp_path / 'missing'}" in run.stderr


@pytest.mark.parametrize("argv", [
    ["make-cam", "--model", "m", "--voc", "v", "--out", "o"],
    ["train-refine", "--classifier", "c", "--cams", "c", "--voc", "v", "--out", "o"],
    ["train-cls", "--voc", "v", "--out", "o"]])
def test_stages_default_to_cuda_when_available(argv, monkeypatch):
    """make-cam and train-refine resolve --device like the other stages."""
    from wsss_fast.commands import default_device

    args = cli.build_parser().parse_args(argv)
    assert args.device is None
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert default_device(args.device) == "cuda"
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert default_device(args.device) == "cpu"
    assert default_device(cli.build_parser().parse_args(argv + ["--device", "cuda:1"]).device) == "cuda:1"
