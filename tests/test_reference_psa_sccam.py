"""PSA's CAM classifier and SC-CAM's rounds against the reference code: the
presets, the optimiser's groups and the learning rate at every step
computed from the references' formulas (file and line next to each value),
SC-CAM's round schedule, --round0, and PSA's border band."""
from __future__ import annotations

import inspect
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from schedule_utils import training_steps
from wsss_fast.cli import build_parser, main
from wsss_fast.data.demo import make_demo_data
from wsss_fast.models.checkpoints import load_classifier
from wsss_fast.pairs import counted_sources, offsets
from wsss_fast.stages.classify import preset, reference, round0_preset
from wsss_fast.training import GROUP_NAMES, LOG, load_final
from wsss_fast.transforms import TrainAugment

SMALL = ["--backbone", "scratch", "--backbone-option", "width=4", "--crop", "48", "--resize-long", "48", "64",
         "--batch-size", "8", "--num-workers", "0", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref") / "demo"
    make_demo_data(root, n_train=48, n_val=8, size=64, seed=5, progress=False)
    return root


def test_cam_preset_is_psa_train_cls():
    p = preset("cam")
    assert p.train.batch_size == 16           # psa/train_cls.py:42 --batch_size default 16
    assert p.train.epochs == 15               # psa/train_cls.py:43 --max_epoches 15
    assert p.train.lr == 0.1                  # psa/train_cls.py:45 --lr 0.1
    assert p.train.weight_decay == 5e-4       # psa/train_cls.py:47 --wt_dec 5e-4
    assert p.augment["crop"] == 448           # psa/train_cls.py:52 --crop_size 448
    assert p.augment["resize_long"] == (256, 512)  # psa/train_cls.py:64 RandomResizeLong(256, 512)
    assert TrainAugment(p.augment["crop"]).jitter == (0.3, 0.3, 0.3, 0.1)  # psa/train_cls.py:66 ColorJitter
    assert p.train.drop_last                  # psa/train_cls.py:75 drop_last=True
    assert p.dropout == 0.5                   # psa/network/resnet38_cls.py:12 Dropout2d(0.5)
    assert not p.head_bias and p.head_init == "xavier"  # resnet38_cls.py:14-15 fc8 bias=False, xavier_uniform_
    assert reference("cam") == p              # the preset is the code's


def test_psa_poly_optimizer_groups_and_lr_at_every_step(tmp_path):
    cfg = replace(preset("cam").train, num_workers=0)
    steps = training_steps(cfg, 40, tmp_path)
    max_step = (40 // 16) * 15                 # psa/train_cls.py:77 (len // batch_size) * max_epoches
    assert len(steps) == max_step and all(s["batch"] == 16 for s in steps)
    # psa/train_cls.py:91-96: lr x1 wd, x2 no wd, x10 wd, x20 no wd
    mult = dict(zip(GROUP_NAMES, (1, 2, 10, 20)))
    decay = dict(zip(GROUP_NAMES, (5e-4, 0, 5e-4, 0)))
    for s, step in enumerate(steps):
        poly = (1 - s / max_step) ** 0.9       # psa/tool/torchutils.py:25, power = PolyOptimizer.momentum = 0.9
        for g in GROUP_NAMES:
            assert step["lr"][g] == pytest.approx(0.1 * mult[g] * poly, rel=1e-12)
            assert step["weight_decay"][g] == decay[g]
    # psa/tool/torchutils.py:13 super().__init__(params, lr, weight_decay): SGD's third
    # positional parameter is momentum, so PSA trains with momentum = wt_dec = 5e-4.
    assert list(inspect.signature(torch.optim.SGD).parameters)[2] == "momentum"
    assert {s["momentum"] for s in steps} == {5e-4} and not steps[0]["nesterov"]


def test_sccam_preset_is_sccam_train_cls():
    p = preset("sccam")
    assert p.train.batch_size == 16           # SC-CAM/train_cls.py:110 --batch_size 16
    assert p.train.epochs == 61               # SC-CAM/train_cls.py:111 --max_epoches 61
    assert p.train.lr == 0.01                 # SC-CAM/train_cls.py:113; script.sh:28 --lr 0.01
    assert p.train.weight_decay == 5e-4       # SC-CAM/train_cls.py:115 --wt_dec 5e-4
    assert p.augment == {"crop": 224, "resize_long": (256, 512)}  # train_cls.py:119; :90 ResizeLong(img, 256, 512)
    assert (p.sub_weight, p.subcategories) == (5.0, 10)  # train_cls.py:121 subcls_loss_weight 5, :123 k_cluster 10
    assert p.train.momentum == 5e-4           # SC-CAM/tool/torchutils.py:13, PSA's PolyOptimizer
    # SC-CAM/train_cls.py:299-300 saves weights after epoch `ep` (from 0) when ep % 10 == 0;
    # script.sh:12-14 uses ep30 of round 1, ep40 of round 2, ep50 of round 3: 31, 41, 51 epochs.
    assert p.round_epochs == tuple(ep + 1 for ep in (30, 40, 50))
    parser = build_parser()
    args = parser.parse_args(["train-cls", "--voc", "v", "--out", "o", "--method", "sccam"])
    assert args.n_init == 10                  # create_pseudo_label.py:185 KMeans(..., max_iter=300), sklearn's n_init 10
    assert args.round0_preset == "cam" and args.init_from == "imagenet"  # script.sh:11 PSA's res38_cls.pth; :28 ImageNet


def test_sccam_round_stops_at_its_checkpoint_of_a_61_epoch_poly_schedule(tmp_path):
    cfg = replace(preset("sccam").train, num_workers=0, stop_epoch=31)
    steps = training_steps(cfg, 32, tmp_path)
    max_step = (32 // 16) * 61                # SC-CAM/train_cls.py:153 (len // batch_size) * max_epoches
    assert len(steps) == 31 * (32 // 16)      # the checkpoint of epoch index 30
    for s, step in enumerate(steps):
        assert step["lr"]["pretrained_weight"] == pytest.approx(0.01 * (1 - s / max_step) ** 0.9, rel=1e-12)
    assert steps[-1]["lr"]["pretrained_weight"] > 0.005  # far from decayed to zero


def test_round0_preset_cam_is_psa_on_the_rounds_backbone():
    p = replace(preset("sccam"), backbone="scratch", backbone_options={"width": 4})
    r0 = round0_preset(p, "cam")
    assert (r0.backbone, r0.backbone_options, r0.subcategories) == ("scratch", {"width": 4}, 0)
    assert (r0.train.lr, r0.train.batch_size, r0.train.epochs, r0.augment["crop"]) == (0.1, 16, 15, 448)
    same = round0_preset(p, "sccam")
    assert same.subcategories == 0 and same.round_epochs == () and same.train == p.train


def epoch_records(run):
    return [json.loads(line) for line in open(run / LOG) if '"event": "epoch"' in line]


def step_lrs(run):
    return [json.loads(line)["lr"] for line in open(run / LOG) if '"event": "step"' in line]


def test_rounds_train_their_epochs_from_round0_path(voc, tmp_path):
    base = tmp_path / "cam"
    assert main(["train-cls", "--voc", str(voc), "--split", "train", "--out", str(base), "--method", "cam",
                 "--epochs", "1", *SMALL]) == 0
    out = tmp_path / "sccam"
    assert main(["train-cls", "--voc", str(voc), "--split", "train", "--out", str(out), "--method", "sccam",
                 "--rounds", "2", "--epochs", "4", "--round-epochs", "1", "3", "--subcategories", "2",
                 "--n-init", "2", "--round0", str(base), *SMALL]) == 0
    assert not (out / "round0").exists()       # round 0 is the given classifier
    assert [len(epoch_records(out / f"round{r}")) for r in (1, 2)] == [1, 3]
    start = json.loads(open(out / "round2" / LOG).readline())
    assert start["config"]["epochs"] == 4 and start["config"]["stop_epoch"] == 3
    assert load_classifier(out).subcategories == 2


def test_round0_from_a_psa_classifier_file(voc, tmp_path):
    """PSA's res38_cls.pth layout: backbone keys at the top level and fc8.weight
    (psa/network/resnet38_cls.py:14); here on the scratch backbone."""
    base = tmp_path / "cam"
    assert main(["train-cls", "--voc", str(voc), "--split", "train", "--out", str(base), "--method", "cam",
                 "--epochs", "1", *SMALL]) == 0
    state = load_final(base)["model"]
    psa = {("fc8.weight" if k == "head.weight" else k.removeprefix("backbone.")): v for k, v in state.items()}
    torch.save(psa, tmp_path / "res38_cls.pth")
    out = tmp_path / "sccam"
    assert main(["train-cls", "--voc", str(voc), "--split", "train", "--out", str(out), "--method", "sccam",
                 "--rounds", "1", "--epochs", "1", "--subcategories", "2", "--n-init", "2",
                 "--round0", str(tmp_path / "res38_cls.pth"), *SMALL]) == 0
    imported = load_final(out / "round0")
    for key, value in state.items():
        torch.testing.assert_close(imported["model"][key], value, rtol=0, atol=0)
    assert imported["metadata"]["kind"] == "classifier"


def test_round0_file_that_is_not_a_classifier_is_a_clear_error(voc, tmp_path, capsys):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "x.pth")
    assert main(["train-cls", "--voc", str(voc), "--split", "train", "--out", str(tmp_path / "o"),
                 "--method", "sccam", "--rounds", "1", "--epochs", "1", "--round0", str(tmp_path / "x.pth"),
                 *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert "fc8.weight" in err and "\n" not in err


def test_psa_border_band_is_its_index_construction():
    """psa/tool/pyutils.py:137-146 get_indices_of_pairs: sources are
    full_indices[:-radius_floor, radius_floor:-radius_floor], radius_floor =
    radius - 1; every such source has all its pairs (the targets of
    pyutils.py:151-152 stay inside). --border psa counts exactly those."""
    radius, height, width = 5, 9, 13
    rf = radius - 1
    psa_sources = np.zeros((height, width), dtype=bool)
    psa_sources[:-rf, rf:-rf] = True
    for dy, dx in offsets(radius):
        got = np.asarray(counted_sources(height, width, radius, dy, dx, "psa"))
        np.testing.assert_array_equal(got, psa_sources, err_msg=f"offset {(dy, dx)}")
    parser = build_parser()
    for command in ("rw", "train-aff"):
        action = next(a for a in parser._subparsers._group_actions[0].choices[command]._actions
                      if a.dest == "border")
        assert action.default == "all" and "psa" in action.choices
