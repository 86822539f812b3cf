"""DRS against its code (qjadud1994/DRS): the classifier preset and
--reference (batch, schedule, optimiser groups, weight decay, head and
controller initialisation, the squash transform), the refinement's
--reference, and eval-cam --saliency scoring as scripts/test_cls.py. File
and line of each reference value next to it."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from schedule_utils import training_steps
from wsss_fast import cli
from wsss_fast.models import build_backbone
from wsss_fast.stages import refine
from wsss_fast.stages.classify import build_classifier, preset, reference
from wsss_fast.storage import ScoreMap, save_label_png, save_scores
from wsss_fast.training import GROUP_NAMES
from wsss_fast.transforms import TrainAugment


def test_drs_preset_and_reference_settings():
    p, ref = preset("drs"), reference("drs")
    for q in (p, ref):
        # scripts/train_cls.py:30 batch_size 5, :192 batch_size *= nGPU; run.sh:2 two GPUs
        assert q.train.batch_size == 5 * 2
        assert q.train.lr == 1e-3 and q.train.epochs == 15     # run.sh:4-5 (train_cls.py:34, :37)
        assert q.train.weight_decay == 5e-4                    # train_cls.py:35
        assert q.train.momentum == 0.9 and q.train.nesterov    # train_cls.py:61, :63
        assert q.train.lr_mult == (1.0, 2.0, 10.0, 20.0)       # train_cls.py:57-60
        assert q.augment["crop"] == 320                        # train_cls.py:32 crop_size 320
        assert q.backbone_options == {"drs": "learnable"}      # run.sh:7 --delta=0: the learnable DRS
    # utils/LoadData.py:18 Resize(input_size), input_size 384 (train_cls.py:31), which
    # utils/transforms/transforms.py:170 resizes to (size, size); wsss-fast keeps the aspect ratio
    assert ref.augment == {"crop": 320, "squash": 384} and p.augment == {"crop": 320, "resize_short": 384}
    assert ref.head_bias and ref.head_init == "he"             # models/vgg.py:128 extra_conv4 with bias; :237-243
    assert ref.train.bias_decay and not ref.train.drop_last    # train_cls.py:62 one weight_decay; LoadData.py:28
    assert not p.head_bias and not p.train.bias_decay and p.train.drop_last


def drs_lr_per_epoch(epochs=15, decay_points=(5, 10), lr=1e-3):
    """utils/my_optim.py:39-50 reduce_lr: at the start of epoch `e` (1-based,
    scripts/train_cls.py:214, :144) lr *= 0.1 when e is a decay point."""
    out = []
    for e in range(1, epochs + 1):
        if e in decay_points:
            lr *= 0.1
        out.append(lr)
    return out


def test_drs_reference_schedule_groups_and_batches(tmp_path):
    cfg = replace(reference("drs").train, num_workers=0)
    steps = training_steps(cfg, 23, tmp_path)
    per_epoch = [10, 10, 3]                    # LoadData.py:28 DataLoader without drop_last
    assert [s["batch"] for s in steps] == per_epoch * 15
    mult = dict(zip(GROUP_NAMES, (1, 2, 10, 20)))
    for i, step in enumerate(steps):
        lr = drs_lr_per_epoch()[i // 3]
        for g in GROUP_NAMES:
            assert step["lr"][g] == pytest.approx(lr * mult[g], rel=1e-12)
            assert step["weight_decay"][g] == 5e-4  # train_cls.py:62, biases included
        assert step["momentum"] == 0.9 and step["nesterov"]
    default = training_steps(replace(preset("drs").train, num_workers=0), 23, tmp_path / "default")
    assert [s["batch"] for s in default] == [10, 10] * 15
    assert default[0]["weight_decay"]["new_bias"] == 0.0


def test_drs_classifier_groups_head_and_controllers():
    torch.manual_seed(0)
    model, _ = build_classifier(reference("drs"), 20, None)
    groups = model.param_groups()
    # models/vgg.py:254-269: 'extra' or 'fc' in the name -> new (x10 weights, x20 biases):
    # 13 VGG convolutions pretrained; 3 extra convs, extra_conv4 and 16 DRS controllers
    # (layer*_relu*.fc, extra_relu*.fc; Linear without bias) new.
    assert [len(groups[g]) for g in GROUP_NAMES] == [13, 13, 3 + 1 + 16, 3 + 1]
    head = model.head
    assert head.bias is not None and torch.count_nonzero(head.bias) == 0       # vgg.py:242-243 bias zero
    # vgg.py:240-241: normal(0, sqrt(2 / n)), n = 1 * 1 * 20 for extra_conv4
    assert head.weight.std().item() == pytest.approx(math.sqrt(2 / 20), rel=0.05)
    controllers = [m.controller.weight for m in model.backbone.modules() if getattr(m, "controller", None) is not None]
    assert len(controllers) == 16
    assert torch.cat([c.flatten() for c in controllers]).std().item() == pytest.approx(0.01, rel=0.05)  # vgg.py:249
    assert model.class_maps(torch.zeros(1, 3, 16, 16)).shape == (1, 20, 2, 2)


def test_drs_transform_sizes():
    rng = np.random.default_rng(0)
    ref = TrainAugment(**reference("drs").augment, label_keys=())
    assert ref.size(333, 500, rng) == (384, 384)               # transforms.py:170 F.resize(img, (size, size))
    default = TrainAugment(**preset("drs").augment, label_keys=())
    assert default.size(333, 500, rng) == (384, round(500 * 384 / 333))
    item = {"image": torch.zeros(3, 333, 500, dtype=torch.uint8)}
    for augment in (ref, default):
        assert augment(item, rng)["image"].shape == (3, 320, 320)  # train_cls.py:32, LoadData.py:21 RandomCrop


def test_train_cls_reference_flag_and_explicit_flags_win():
    from wsss_fast.commands.train_cls import preset_from_args

    parser = cli.build_parser()
    args = parser.parse_args(["train-cls", "--voc", "v", "--out", "o", "--method", "drs", "--reference"])
    assert preset_from_args(args) == reference("drs")
    args = parser.parse_args(["train-cls", "--voc", "v", "--out", "o", "--method", "drs", "--reference",
                              "--resize-short", "384", "--no-head-bias"])
    p = preset_from_args(args)
    assert p.augment == {"crop": 320, "resize_short": 384} and not p.head_bias and p.train.bias_decay


def test_refinement_reference_settings(tmp_path, monkeypatch):
    # scripts/train_refine.py:38-39 decay_points '5,10', epoch 15 (the paper's);
    # run.sh:27-28 --epoch=30 --decay_points='10,20' (the code's)
    assert refine.SCHEDULES == {"paper": (15, (5, 10)), "code": (30, (10, 20))}
    seen = {}
    monkeypatch.setattr(refine, "train_refine", lambda *a, **kw: seen.update(kw) or tmp_path / "final.pt")
    base = ["train-refine", "--classifier", "c", "--cams", "m", "--voc", "v", "--out", "o"]
    assert cli.main(base + ["--weights", "w.pth", "--reference"]) == 0
    assert (seen["epochs"], tuple(seen["decay_at"]), seen["new_layer_std"], seen["drop_last"]) == \
        (30, (10, 20), 0.01, False)                            # vgg_refine.py:142; LoadData_refine.py:28
    assert seen["batch_size"] == 5 * 2 and seen["lr"] == 1e-4  # train_refine.py:33, :37, :180; run.sh:24-26
    assert cli.main(base + ["--init", "classifier"]) == 0
    assert (seen["epochs"], seen["new_layer_std"], seen["drop_last"]) == (15, None, True)


def test_refinement_new_layers_drawn_from_n_0_001(tmp_path):
    from wsss_fast.data.demo import CLASS_NAMES

    backbone = build_backbone("vgg16_d1", None, drs="learnable")
    cls = tmp_path / "cls.pt"
    meta = {"kind": "classifier", "backbone": "vgg16_d1", "backbone_options": {"drs": "learnable"},
            "num_classes": len(CLASS_NAMES) - 1, "class_names": list(CLASS_NAMES)}
    torch.save({"model": {}, "metadata": meta, "config": {}}, cls)
    plain = build_backbone("vgg16_d1", None)
    torch.save({k: v for k, v in plain.state_dict().items() if not k.startswith("extra.")}, tmp_path / "vgg.pth")
    net, _ = refine.build_refine_net(cls, "imagenet", tmp_path / "vgg.pth", new_layer_std=0.01)
    extra = torch.cat([m.weight.flatten() for m in net.backbone.extra if isinstance(m, torch.nn.Conv2d)])
    assert extra.std().item() == pytest.approx(0.01, rel=0.02)  # models/vgg_refine.py:135 normal_(0, 0.01)
    assert backbone.extra[0].weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 512)), rel=0.05)


def test_eval_cam_saliency_scores_as_drs_test_cls(tmp_path, capsys):
    """scripts/test_cls.py:78-85: maps < alpha -> 0; background = 1 - (saliency
    > 50) (utils/LoadData.py:104); argmax over [background, maps] (first
    maximum wins); no ignore label in this evaluation."""
    rng = np.random.default_rng(1)
    (tmp_path / "cam").mkdir()
    expected_conf = np.zeros((4, 4), dtype=np.int64)
    for i in range(3):
        keys = np.array([1, 3])
        maps = rng.random((2, 6, 7)).astype(np.float16).astype(np.float32)  # exactly what the file stores
        saliency = rng.integers(0, 256, (6, 7)).astype(np.uint8)
        gt = rng.integers(0, 4, (6, 7)).astype(np.uint8)
        save_scores(tmp_path / "cam" / f"im{i}.npz", keys, maps)
        (tmp_path / "sal").mkdir(exist_ok=True)
        Image.fromarray(saliency, mode="L").save(tmp_path / "sal" / f"im{i}.png")
        save_label_png(tmp_path / "gt" / f"im{i}.png", gt)
        full = np.zeros((4, 6, 7), dtype=np.float32)
        full[keys] = maps
        full[full < 0.2] = 0
        full[0] = 1.0 - (saliency > 50)
        pred = full.argmax(0)
        np.add.at(expected_conf, (gt.ravel(), pred.ravel()), 1)
    iou = np.diag(expected_conf) / (expected_conf.sum(0) + expected_conf.sum(1) - np.diag(expected_conf))
    assert cli.main(["eval-cam", "--cam", str(tmp_path / "cam"), "--gt", str(tmp_path / "gt"), "--num-classes",
                     "4", "--saliency", str(tmp_path / "sal"), "--json", str(tmp_path / "e.json"), "--no-plots",
                     "--no-progress"]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["miou"] == pytest.approx(float(np.nanmean(iou)), rel=1e-12)
    assert "saliency" in capsys.readouterr().out
    assert cli.main(["eval-cam", "--cam", str(tmp_path / "cam"), "--gt", str(tmp_path / "gt"), "--num-classes",
                     "4", "--saliency", str(tmp_path / "sal"), "--threshold", "0.2", "--no-progress"]) == 2


def test_scores_keep_their_keys_order_free():
    """eval-cam --saliency orders a CAM file's channels by class as make-labels
    does (a first-maximum argmax over classes in order)."""
    from wsss_fast.stages.labels import saliency_labels

    maps = np.full((2, 1, 2), 0.5, dtype=np.float32)
    saliency = np.full((1, 2), 255, dtype=np.uint8)
    a = saliency_labels(ScoreMap(np.array([3, 1]), maps), saliency, ignore=False)
    b = saliency_labels(ScoreMap(np.array([1, 3]), maps), saliency, ignore=False)
    assert a.tolist() == b.tolist() == [[1, 1]]


def test_drs_deeplab_masked_self_loss():
    """DeepLab-V2-PyTorch/train.py:263-266: criterion(logit, labels) +
    criterion(logit, argmax(logit.detach() * cls_labels)), cls_labels with
    background 1 (libs/datasets/voc.py:97, :101)."""
    from wsss_fast.stages.segment.train import SegRecipe, segment_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, requires_grad=True)
    image_labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    target = torch.randint(0, 4, (2, 5, 6))
    cls_labels = torch.cat([torch.ones(2, 1), image_labels], 1)
    criterion = torch.nn.CrossEntropyLoss(ignore_index=255)
    expected = criterion(logits, target) + criterion(logits, (logits.detach() * cls_labels[:, :, None, None]).argmax(1))

    def model(x, msc=()):
        return logits

    recipe = SegRecipe(loss_at="logits", masked_self_loss=True)
    loss, metrics = segment_loss(recipe)(model, {"image": None, "target": target, "label": image_labels})
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6) and "loss_self" in metrics
    args = cli.build_parser().parse_args(["train-seg", "--voc", "v", "--labels", "l", "--out", "o",
                                          "--masked-self-loss"])
    from wsss_fast.commands.train_seg import recipe_from_args

    assert recipe_from_args(args)[0].masked_self_loss
