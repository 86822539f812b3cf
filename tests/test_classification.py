"""train-cls: training that lowers the loss, exact resume, SC-CAM rounds, and
clear errors (the presets against the reference code: test_reference_*.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wsss_fast.errors import UsageError
from wsss_fast.stages.classify import build_classifier, override, preset, train_classifier
from wsss_fast.cli import main
from wsss_fast.data.dataset import VOCSegmentation
from wsss_fast.data.demo import make_demo_data
from wsss_fast.models import Classifier, build_backbone
from wsss_fast.models.checkpoints import load_classifier
from wsss_fast.training import load_final

SMALL = ["--backbone", "scratch", "--backbone-option", "width=4", "--crop", "48",
         "--resize-long", "48", "64", "--batch-size", "8", "--num-workers", "0",
         "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_demo_data(root, n_train=48, n_val=8, size=64, seed=3, progress=False)
    return root


def small_preset(method="cam", **changes):
    return override(preset(method), backbone="scratch", **{"train.num_workers": 0, "train.batch_size": 8,
                                                           "augment.crop": 48, "augment.resize_long": (48, 64),
                                                           **changes})


def scratch(p, width=4):
    p.backbone_options = {"width": width}
    return p


def test_irn_preset_follows_irn():
    """IRN's run_sample.py / step/train_cam.py / net/resnet50_cam.py."""
    irn = preset("cam", "irn")
    assert (irn.backbone, irn.backbone_options, irn.dropout) == \
        ("resnet50", {"train_bn_affine": True, "frozen_stages": 2}, 0.0)
    t = irn.train
    assert (t.batch_size, t.epochs, t.lr, t.weight_decay, t.momentum, t.schedule, t.poly_power) == \
        (16, 5, 0.1, 1e-4, 1e-4, "poly", 0.9)
    assert t.lr_mult == (1.0, 1.0, 10.0, 10.0) and t.bias_decay
    assert irn.augment == {"crop": 512, "resize_long": (320, 640), "jitter": None}
    assert preset("cam", "psa") == preset("cam")
    with pytest.raises(UsageError, match="method 'drs' has no preset 'irn'; choose one of drs"):
        preset("drs", "irn")
    with pytest.raises(UsageError, match="unknown method 'irn'"):
        preset("irn")


def test_irn_preset_trains_with_its_groups(voc, tmp_path):
    """--preset irn on a small ResNet-50 input: the optimiser's groups and
    weight decay are IRN's (biases decayed, head x10), layer2 is not trained."""
    from wsss_fast.training import build_optimizer

    p = preset("cam", "irn")
    model, _ = build_classifier(p, 10, None)
    opt = build_optimizer(model.param_groups(), p.train)
    groups = {g["name"]: (g["lr"], g["weight_decay"]) for g in opt.param_groups}
    assert groups == {"pretrained_weight": (0.1, 1e-4), "pretrained_bias": (0.1, 1e-4),
                      "new_weight": (1.0, 1e-4)}
    out = tmp_path / "irn"
    assert main(["train-cls", "--voc", str(voc), "--split", "train", "--out", str(out), "--preset", "irn",
                 "--epochs", "1", "--batch-size", "8", "--crop", "32", "--resize-long", "32", "40",
                 "--lr", "1e-4", "--num-workers", "0", "--device", "cpu", "--no-progress"]) == 0
    meta = load_final(out)["metadata"]
    assert meta["backbone"] == "resnet50" and meta["backbone_options"]["frozen_stages"] == 2
    torch.manual_seed(0)  # train-cls's initialisation (seed 0)
    initial, _ = build_classifier(p, 10, None)
    trained = load_classifier(out)
    assert torch.equal(trained.backbone.layer2[0].conv1.weight, initial.backbone.layer2[0].conv1.weight)
    assert not torch.equal(trained.backbone.layer3[0].conv1.weight, initial.backbone.layer3[0].conv1.weight)


def test_two_epochs_lower_the_loss(voc, tmp_path):
    out = tmp_path / "cam"
    assert main(["train-cls", "--voc", str(voc), "--split", "train", "--out", str(out), "--method", "cam",
                 "--epochs", "6", "--lr", "0.05", "--momentum", "0.9", *SMALL]) == 0
    epochs = [json.loads(line) for line in open(out / "log.jsonl") if '"epoch"' in line and '"event": "epoch"' in line]
    assert len(epochs) == 6
    assert np.mean([e["loss"] for e in epochs[-2:]]) < np.mean([e["loss"] for e in epochs[:2]])
    model = load_classifier(out)
    assert isinstance(model, Classifier) and model.num_classes == 5 and model.sub_head is None
    meta = load_final(out / "final.pt")["metadata"]
    assert meta["kind"] == "classifier" and meta["backbone_options"] == {"width": 4}


class Interrupt(Exception):
    pass


def test_interrupted_then_resumed_equals_uninterrupted(voc, tmp_path, monkeypatch):
    dataset = VOCSegmentation(voc, "train")
    p = scratch(small_preset(**{"train.epochs": 3, "train.momentum": 0.9}))
    straight = train_classifier("cam", p, dataset, tmp_path / "a", weights=None, progress=False)

    import wsss_fast.stages.classify as classification
    real_loss = classification.classification_loss
    calls = {"n": 0}

    def failing_loss(weight):
        inner = real_loss(weight)

        def loss_fn(model, batch):
            calls["n"] += 1
            if calls["n"] == 8:  # in the second epoch (6 steps per epoch)
                raise Interrupt
            return inner(model, batch)
        return loss_fn

    monkeypatch.setattr(classification, "classification_loss", failing_loss)
    with pytest.raises(Interrupt):
        train_classifier("cam", p, dataset, tmp_path / "b", weights=None, progress=False)
    monkeypatch.setattr(classification, "classification_loss", real_loss)
    assert (tmp_path / "b" / "checkpoint.pt").exists() and not (tmp_path / "b" / "final.pt").exists()
    with pytest.raises(Exception, match="--resume"):
        train_classifier("cam", p, dataset, tmp_path / "b", weights=None, progress=False)
    resumed = train_classifier("cam", p, dataset, tmp_path / "b", weights=None, resume=True, progress=False)
    a, b = load_final(straight)["model"], load_final(resumed)["model"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_sccam_rounds_write_subcategories_and_a_sub_head(voc, tmp_path):
    out = tmp_path / "sccam"
    assert main(["train-cls", "--voc", str(voc), "--split", "train", "--out", str(out), "--method", "sccam",
                 "--epochs", "1", "--rounds", "2", "--subcategories", "3", "--n-init", "2",
                 "--round0-preset", "sccam", *SMALL]) == 0
    for r in (1, 2):
        with np.load(out / f"round{r}" / "subcategories.npz") as z:
            labels, sizes = z["labels"], z["cluster_sizes"]
            names = z["names"].tolist()
        dataset = VOCSegmentation(voc, "train")
        parents = np.stack([dataset.labels[n] for n in names])
        c = dataset.num_classes
        assert labels.shape == (48, 3 * c) and sizes.shape == (c, 3)
        # every image has exactly one sub-category per parent class it holds
        np.testing.assert_array_equal(labels.reshape(48, c, 3).sum(-1), parents)
        np.testing.assert_array_equal(sizes.sum(1), parents.sum(0))
        assert json.loads((out / f"round{r}" / "subcategories.json").read_text()).keys() == \
            set(dataset.class_names[1:])
    model = load_classifier(out)
    assert model.subcategories == 3 and model.sub_head.out_channels == 3 * model.num_classes
    # resuming a finished run does nothing and keeps the result
    before = (out / "final.pt").read_bytes()
    assert main(["train-cls", "--voc", str(voc), "--split", "train", "--out", str(out), "--method", "sccam",
                 "--epochs", "1", "--rounds", "2", "--subcategories", "3", "--n-init", "2",
                 "--round0-preset", "sccam", "--resume", *SMALL]) == 0
    assert (out / "final.pt").read_bytes() == before


def test_drs_on_the_scratch_backbone_places_drs_everywhere():
    from wsss_fast.nn import DRS

    backbone = build_backbone("scratch", width=4, drs="delta", delta=0.55)
    assert sum(isinstance(m, DRS) for m in backbone.modules()) == 8
    out = backbone(torch.randn(2, 3, 33, 47))
    assert out.shape == (2, 32, 5, 6)


@pytest.mark.parametrize("extra, message", [
    (["--method", "cam", "--rounds", "2"], "--rounds is for --method sccam"),
    (["--backbone-option", "colour=3"], "has no option 'colour'"),
    (["--backbone", "nonet"], "unknown backbone 'nonet'"),
    (["--split", "empty.txt"], "is empty"),
])
def test_bad_settings_are_one_line_errors(voc, tmp_path, capsys, extra, message):
    (tmp_path / "empty.txt").write_text("")
    args = ["train-cls", "--voc", str(voc), "--split", "train", "--out", str(tmp_path / "o"), *SMALL, *extra]
    args = [str(tmp_path / "empty.txt") if a == "empty.txt" else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_weights_file_is_a_clear_error(voc, tmp_path, capsys):
    args = ["train-cls", "--voc", str(voc), "--split", "train", "--out", str(tmp_path / "o"), *SMALL]
    assert main(args + ["--weights", str(tmp_path / "w.pth")]) == 2
    assert "scratch' is always randomly initialised" in capsys.readouterr().err
    args[args.index("scratch")] = "efficientnet_lite0"
    args.remove("width=4")
    args.remove("--backbone-option")
    assert main(args + ["--weights", str(tmp_path / "nope.pth")]) == 2
    assert "nope.pth" in capsys.readouterr().err


def test_metrics_go_to_tensorboard_when_it_is_installed(voc, tmp_path, monkeypatch):
    from wsss_fast.training import Trainer

    scalars = []

    class Writer:
        def add_scalar(self, tag, value, step):
            scalars.append((tag, step))

        def flush(self):
            pass

    monkeypatch.setattr(Trainer, "_tensorboard", lambda self: Writer())
    p = scratch(small_preset(**{"train.epochs": 2, "train.log_every": 3}))
    train_classifier("cam", p, VOCSegmentation(voc, "train"), tmp_path / "tb", weights=None, progress=False)
    assert ("epoch/loss", 0) in scalars and ("epoch/loss", 1) in scalars and ("epoch/seconds", 1) in scalars
    assert ("step/loss", 2) in scalars and ("step/lr", 5) in scalars
