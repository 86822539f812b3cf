"""DeepLab stage: head shapes and parameter groups, the loss's ignore label,
train-seg (loss goes down, exact resume, metadata, errors) and infer-seg
(PNGs that eval reads, resume, sharding, multi-scale + CRF path)."""
import json
import math
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cam_fixtures import one_thread  # noqa: F401
from dist_utils import torchrun
from wsss_fast import cli
from wsss_fast.data.demo import make_demo_data
from wsss_fast.data.voc import VOCRoot
from wsss_fast.errors import UsageError
from wsss_fast.inference import batches_by_size
from wsss_fast.models import Backbone, build_backbone
from wsss_fast.models.deeplab import ASPP, DeepLab, DecoderHead, LargeFOV, segmentation_loss
from wsss_fast.models.checkpoints import load_deeplab
from wsss_fast.stages.segment import segment_split
from wsss_fast.storage import load_label_png, save_label_png
from wsss_fast.training import FINAL, LOG, Trainer
from wsss_fast.transforms import TrainAugment, normalize

NUM_CLASSES = 6  # demo: background + 5

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("deeplab") / "demo"
    make_demo_data(root, n_train=24, n_val=8, size=48, progress=False)
    return root


def train_args(demo, out, *extra):
    return ["train-seg", "--voc", str(demo), "--split", "train", "--labels", str(demo / "SegmentationClass"),
            "--out", str(out), "--backbone", "scratch", "--backbone-option", "width=4", "--epochs", "2",
            "--batch-size", "4", "--crop", "48", "--lr", "0.01", "--num-workers", "0", "--device", "cpu",
            "--no-progress", *extra]


def infer_args(model, demo, out, *extra):
    return ["infer-seg", "--model", str(model), "--voc", str(demo), "--out", str(out), "--num-workers", "0",
            "--device", "cpu", "--no-progress", *extra]


@pytest.fixture(scope="module")
def trained(demo, tmp_path_factory):
    """A train-seg run folder on the demo's ground truth."""
    out = tmp_path_factory.mktemp("deeplab") / "run"
    assert cli.main(train_args(demo, out)) == 0
    return out


class TinyPretrained(Backbone):
    """A one-layer backbone whose parameters count as pretrained."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=8, padding=1)
        self.out_channels, self.stride = 6, 8
        self.stage_channels, self.stage_strides = (6,), (8,)

    def forward_stages(self, x):
        return [self.conv(x)]


@pytest.mark.parametrize("head", ["aspp", "largefov"])
def test_heads_give_stride_8_logits(head):
    model = DeepLab(build_backbone("scratch", width=4), 5, head).eval()
    assert model(torch.randn(2, 3, 41, 57)).shape == (2, 5, 6, 8)


@pytest.mark.parametrize("backbone", ["scratch", "efficientnet_lite0"])
def test_decoder_head_gives_stride_4_logits_from_the_pyramid(backbone):
    torch.manual_seed(0)
    net = build_backbone(backbone, **({"width": 4} if backbone == "scratch" else {}))
    model = DeepLab(net, 5, "decoder", rates=(1, 2)).eval()
    head = model.head
    assert isinstance(head, DecoderHead) and [c.dilation for c in head.aspp.branches] == [(1, 1), (2, 2)]
    assert all(c.bias is None for c in head.aspp.branches)
    x = torch.randn(2, 3, 41, 57)
    with torch.no_grad():
        assert torch.equal(model(x), torch.zeros(2, 5, 11, 15))  # zero-initialised classifier: all classes equal
        nn.init.normal_(head.classifier.weight)
        maps = net.forward_pyramid(x)
        context = F.interpolate(F.relu(head.aspp_norm[0](sum(
            F.conv2d(maps[-1], c.weight, padding=c.padding, dilation=c.dilation) for c in head.aspp.branches))),
            size=maps[0].shape[-2:], mode="bilinear", align_corners=False)
        expected = head.classifier(head.fuse(torch.cat([context, head.fine(maps[0])], 1)))
        assert torch.allclose(model(x), expected, atol=1e-5)
    groups = model.param_groups()  # scratch's backbone is new as well
    assert {id(p) for p in head.parameters()} <= {id(p) for p in groups["new_weight"] + groups["new_bias"]}


def test_heads_refuse_what_they_cannot_build():
    with pytest.raises(ValueError, match="pyramid starts finer than its stride-8 output"):
        DeepLab(TinyPretrained(), 4, "decoder")
    with pytest.raises(ValueError, match="largefov head has no ASPP rates"):
        DeepLab(build_backbone("scratch", width=4), 4, "largefov", rates=(1, 2))
    with pytest.raises(ValueError, match="integers >= 1"):
        ASPP(8, 3, (0, 2))


def test_largefov_on_vgg16_conv5_and_aspp_on_resnet101():
    torch.manual_seed(0)
    full = build_backbone("vgg16_d1").eval()
    conv5 = build_backbone("vgg16_d1", extra_convs=False).eval()
    assert conv5.load_state_dict(full.state_dict(), strict=False).unexpected_keys == \
        [k for k in full.state_dict() if k.startswith("extra.")]
    with pytest.raises(UsageError, match="extra_convs=False leaves out"):
        build_backbone("vgg16_d1", drs="learnable", drs_layers=[13, 14], extra_convs=False)
    x = torch.randn(1, 3, 33, 41)
    with torch.no_grad():
        assert torch.equal(conv5(x), full.forward_stages(x)[1])  # relu5_3
        assert DeepLab(conv5, 21, "largefov").eval()(x).shape == (1, 21, 5, 6)
        model = DeepLab(build_backbone("resnet101"), 21, "aspp").eval()
        assert model(x).shape == (1, 21, 5, 6)
    groups = model.param_groups()
    assert sum(map(len, groups.values())) == len([p for n, p in model.named_parameters() if "bn" not in n
                                                   and "downsample.1" not in n])  # BN frozen
    assert {id(p) for p in groups["new_weight"] + groups["new_bias"]} == {id(p) for p in model.head.parameters()}


def test_aspp_sums_four_dilated_branches_initialised_small():
    aspp = ASPP(16, 3)
    assert [c.dilation for c in aspp.branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    x = torch.randn(1, 16, 30, 30)
    assert torch.allclose(aspp(x), sum(F.conv2d(x, c.weight, c.bias, padding=c.padding, dilation=c.dilation)
                                       for c in aspp.branches), atol=1e-6)
    big = ASPP(512, 21)
    weights = torch.cat([c.weight.flatten() for c in big.branches])
    assert abs(weights.std().item() - 0.01) < 1e-3 and all((c.bias == 0).all() for c in big.branches)


def test_largefov_layers():
    head = LargeFOV(512, 21)
    assert head.fc6.dilation == (12, 12) and head.fc6.kernel_size == (3, 3) and head.fc6.out_channels == 1024
    assert head.fc7.kernel_size == (1, 1) and head.fc8.out_channels == 21
    assert head.pool5.stride == 1 and head.pool5.kernel_size == 3
    assert abs(head.fc8.weight.std().item() - 0.01) < 1e-3
    head.train()
    x = torch.randn(1, 512, 5, 5)
    assert not torch.equal(head(x), head(x))  # dropout in training
    head.eval()
    assert torch.equal(head(x), head(x))


def test_head_parameters_are_new():
    model = DeepLab(TinyPretrained(), 4, "aspp")
    groups = model.param_groups()
    head = {id(p) for p in model.head.parameters()}
    assert {id(p) for p in groups["new_weight"] + groups["new_bias"]} == head
    assert {id(p) for p in groups["pretrained_weight"] + groups["pretrained_bias"]} == \
        {id(p) for p in model.backbone.parameters()}


def test_loss_ignores_void_pixels():
    logits = torch.tensor([[[[2.0, 0.0], [1.0, 5.0]],
                            [[0.0, 3.0], [1.0, -5.0]],
                            [[-1.0, 1.0], [3.0, 9.0]]]], requires_grad=True)  # (1, 3, 2, 2)
    target = torch.tensor([[[0, 255], [2, 255]]])

    def nll(scores, label):
        return -scores[label] + math.log(sum(math.exp(s) for s in scores))

    expected = (nll([2.0, 0.0, -1.0], 0) + nll([1.0, 1.0, 3.0], 2)) / 2
    loss = segmentation_loss(logits, target)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert (logits.grad[0, :, 0, 1] == 0).all() and (logits.grad[0, :, 1, 1] == 0).all()
    empty = segmentation_loss(logits, torch.full_like(target, 255))
    assert empty.item() == 0.0


def test_loss_upsamples_logits_to_the_labels():
    logits = torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1)
    target = torch.full((1, 9, 9), 1)
    target[0, :3] = 255
    expected = F.cross_entropy(logits.view(1, 3), torch.tensor([1]))
    assert segmentation_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_train_augment_rescales_by_a_factor():
    item = {"image": torch.zeros(3, 40, 40, dtype=torch.uint8), "target": torch.ones(40, 40, dtype=torch.int64)}
    out = TrainAugment(40, scale=(0.5, 0.5), jitter=None, label_keys=("target",))(item, np.random.default_rng(0))
    assert out["image"].shape == (3, 40, 40) and (out["target"] == 1).sum() == 20 * 20
    with pytest.raises(ValueError, match="at most one"):
        TrainAugment(40, scale=(0.5, 1.5), resize_long=(10, 20))


def test_batches_by_size_groups_same_sizes_in_order():
    sizes = [(5, 7), (7, 5), (5, 7), (5, 7), (7, 5), (5, 7)]
    assert batches_by_size(sizes, 2) == [[0, 2], [3, 5], [1, 4]]
    assert batches_by_size([], 3) == []


def test_train_seg_lowers_the_loss_and_resumes_exactly(demo, trained, tmp_path, monkeypatch):
    epochs = [json.loads(line) for line in (trained / LOG).read_text().splitlines()]
    losses = [r["loss"] for r in epochs if r["event"] == "epoch"]
    assert len(losses) == 2 and losses[1] < losses[0]
    payload = torch.load(trained / FINAL, weights_only=True)
    assert payload["metadata"] == {"kind": "segmentation", "backbone": "scratch",
                                   "backbone_options": {"width": 4}, "head": "aspp", "aspp_rates": [6, 12, 18, 24],
                                   "num_classes": NUM_CLASSES, "class_names": list(VOCRoot(demo).class_names)}

    save = Trainer._save_checkpoint

    def stop_after_first_epoch(self, epoch):
        save(self, epoch)
        if epoch == 0:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    monkeypatch.setattr(Trainer, "_save_checkpoint", stop_after_first_epoch)
    assert cli.main(train_args(demo, out)) == 130
    monkeypatch.undo()
    assert not (out / FINAL).exists()
    assert cli.main(train_args(demo, out)) == 2  # a run is there: --resume or another folder
    assert cli.main(train_args(demo, out, "--resume")) == 0
    resumed = torch.load(out / FINAL, weights_only=True)["model"]
    assert resumed.keys() == payload["model"].keys()
    assert all(torch.equal(resumed[k], payload["model"][k]) for k in resumed)


def test_largefov_trains_and_segments(demo, tmp_path):
    run = tmp_path / "run"
    assert cli.main(train_args(demo, run, "--head", "largefov", "--epochs", "1")) == 0
    model, meta = load_deeplab(run)
    assert meta["head"] == "largefov" and isinstance(model.head, LargeFOV)
    assert cli.main(infer_args(run, demo, tmp_path / "pred", "--no-eval")) == 0
    assert len(list((tmp_path / "pred").glob("*.png"))) == 8


def test_decoder_head_trains_and_its_rates_travel_with_the_checkpoint(demo, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(train_args(demo, run, "--head", "decoder", "--aspp-rates", "1,2,3", "--epochs", "1")) == 0
    model, meta = load_deeplab(run)
    assert meta["head"] == "decoder" and meta["aspp_rates"] == [1, 2, 3] and isinstance(model.head, DecoderHead)
    assert [c.dilation[0] for c in model.head.aspp.branches] == [1, 2, 3]
    assert cli.main(infer_args(run, demo, tmp_path / "pred", "--no-eval")) == 0
    labels = [load_label_png(p) for p in (tmp_path / "pred").glob("*.png")]
    assert len(labels) == 8 and all(lab.shape == (48, 48) for lab in labels)
    capsys.readouterr()
    assert cli.main(train_args(demo, tmp_path / "b", "--head", "largefov", "--aspp-rates", "1,2")) == 2
    assert "the largefov head has no ASPP rates" in capsys.readouterr().err


def test_channels_last_changes_the_memory_order_not_the_values(demo, tmp_path, monkeypatch):
    import wsss_fast.stages.segment.train as seg_train
    formats, losses = [], []

    def recording_loss(logits, target, at="image"):
        formats.append(logits.is_contiguous(memory_format=torch.channels_last))
        losses.append(segmentation_loss(logits, target, at))
        return losses[-1]

    monkeypatch.setattr(seg_train, "segmentation_loss", recording_loss)
    flags = ("--head", "decoder", "--aspp-rates", "1,2", "--epochs", "1")
    assert cli.main(train_args(demo, tmp_path / "plain", *flags)) == 0
    assert cli.main(train_args(demo, tmp_path / "cl", *flags, "--channels-last")) == 0
    assert formats == [False] * 6 + [True] * 6  # 24 images in batches of 4
    # Same initial weights and first batch: the first losses differ by float rounding only (the
    # weights then drift apart by rounding through BatchNorm and SGD, as any two summation orders).
    assert abs(losses[6].item() - losses[0].item()) <= 1e-5 * losses[0].item()
    fast = torch.load(tmp_path / "cl" / FINAL, weights_only=True)
    assert fast["config"]["channels_last"]
    assert load_deeplab(tmp_path / "cl")[0].head.classifier.weight.is_contiguous()  # loads as any checkpoint


def test_iterations_override_epochs(demo, tmp_path):
    # 24 images in batches of 12: 2 steps per epoch, so 7 iterations take 4 epochs.
    out = tmp_path / "run"
    assert cli.main(train_args(demo, out, "--iterations", "7", "--batch-size", "12", "--scale-range", "1,1")) == 0
    records = [json.loads(line) for line in (out / LOG).read_text().splitlines()]
    assert records[0]["config"]["epochs"] == 4 and records[0]["steps_per_epoch"] == 2
    assert records[0]["config"]["extra"]["iterations"] == 7
    assert sum(r["event"] == "epoch" for r in records) == 4


def test_infer_seg_writes_pngs_that_eval_reads(demo, trained, tmp_path, capsys):
    out = tmp_path / "pred"
    assert cli.main(infer_args(trained, demo, out)) == 0
    printed = capsys.readouterr().out
    assert "8 images" in printed and "mean" in printed and "pixel accuracy" in printed
    voc = VOCRoot(demo)
    names = voc.split("val")
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(names)
    for name in names:
        label = load_label_png(out / f"{name}.png")
        assert label.shape == voc.load_image(name).shape[:2] and label.max() < NUM_CLASSES
    assert cli.main(["eval", "--pred", str(out), "--gt", str(demo / "SegmentationClass"), "--no-progress"]) == 0


def test_single_scale_labels_are_the_argmax_of_upsampled_logits(demo, trained, tmp_path):
    model, _ = load_deeplab(trained)
    voc = VOCRoot(demo)
    segment_split(model, voc, "val", tmp_path, batch_size=3, num_workers=0, progress=False)
    for name in voc.split("val"):
        image = torch.from_numpy(voc.load_image(name)).permute(2, 0, 1)
        with torch.no_grad():
            logits = F.interpolate(model(normalize(image)[None]), size=image.shape[1:], mode="bilinear",
                                   align_corners=False)
        assert np.array_equal(load_label_png(tmp_path / f"{name}.png"), logits[0].argmax(0).numpy())


def test_bfloat16_labels_mostly_equal_float32_and_precision_is_recorded(demo, trained, tmp_path):
    model, _ = load_deeplab(trained)
    voc = VOCRoot(demo)
    segment_split(model, voc, "val", tmp_path / "f32", num_workers=0, progress=False)
    model, _ = load_deeplab(trained)
    segment_split(model, voc, "val", tmp_path / "bf16", num_workers=0, progress=False, precision="bfloat16")
    same = [np.mean(load_label_png(tmp_path / "f32" / f"{n}.png") == load_label_png(tmp_path / "bf16" / f"{n}.png"))
            for n in voc.split("val")]
    assert np.mean(same) > 0.9
    recorded = json.loads((tmp_path / "bf16" / "provenance.json").read_text())
    assert recorded["settings"]["precision"] == "bfloat16"


def test_infer_seg_resumes(demo, trained, tmp_path, capsys):
    out = tmp_path / "pred"
    assert cli.main(infer_args(trained, demo, out, "--no-eval")) == 0
    names = sorted(p.name for p in out.glob("*.png"))
    marker = np.zeros((48, 48), dtype=np.uint8)
    save_label_png(out / names[0], marker)  # a kept output is not recomputed
    (out / names[1]).unlink()
    capsys.readouterr()
    assert cli.main(infer_args(trained, demo, out, "--no-eval")) == 0
    printed = capsys.readouterr().out
    assert ": 1 images" in printed and "7 already done" in printed
    assert np.array_equal(load_label_png(out / names[0]), marker)
    assert sorted(p.name for p in out.glob("*.png")) == names


@pytest.mark.slow
def test_two_torchrun_ranks_cover_every_image_once(demo, trained, tmp_path):
    run = torchrun(*infer_args(trained, demo, tmp_path / "pred", "--batch-size", "4"))
    assert run.returncode == 0, run.stderr
    counts = sorted(int(m) for m in re.findall(r"rank \d/2: (\d+) images", run.stdout))
    assert counts == [4, 4], run.stdout
    assert "evaluation skipped under torchrun" in run.stdout
    assert sorted(p.stem for p in (tmp_path / "pred").glob("*.png")) == sorted(VOCRoot(demo).split("val"))


def test_multiscale_flip_crf_path(demo, trained, tmp_path):
    out = tmp_path / "pred"
    assert cli.main(infer_args(trained, demo, out, "--scales", "0.5,1,1.5", "--flip", "--crf",
                               "--crf-workers", "2", "--no-eval")) == 0
    labels = [load_label_png(p) for p in sorted(out.glob("*.png"))]
    assert len(labels) == 8 and all(lab.shape == (48, 48) and lab.max() < NUM_CLASSES for lab in labels)


def test_train_seg_errors_name_the_problem(demo, tmp_path, capsys):
    labels = tmp_path / "labels"
    assert cli.main(train_args(demo, tmp_path / "a", "--labels", str(labels))) == 2
    assert f"label folder {labels} is not a directory" in capsys.readouterr().err
    shutil.copytree(demo / "SegmentationClass", labels)
    (labels / "train_000005.png").unlink()
    assert cli.main(train_args(demo, tmp_path / "b", "--labels", str(labels))) == 2
    err = capsys.readouterr().err
    assert "missing label maps 'train_000005.png'" in err and "1 of the 24 images" in err
    save_label_png(labels / "train_000005.png", np.zeros((20, 20), dtype=np.uint8))
    assert cli.main(train_args(demo, tmp_path / "c", "--labels", str(labels))) == 2
    assert "'train_000005.png'" in capsys.readouterr().err
    save_label_png(labels / "train_000005.png", np.full((48, 48), 11, dtype=np.uint8))
    assert cli.main(train_args(demo, tmp_path / "d", "--labels", str(labels))) == 2
    assert "holds value 11, outside 0..5 and 255" in capsys.readouterr().err
    assert cli.main(train_args(demo, tmp_path / "e", "--backbone-option", "depth=3")) == 2
    assert "has no option 'depth'" in capsys.readouterr().err
    assert cli.main(train_args(demo, tmp_path / "f", "--weights", str(tmp_path / "w.pth"))) == 2
    assert "always randomly initialised" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--scale-range", "1.5,0.5"], ["--scale-range", "1"], ["--iterations", "0"],
                                   ["--lr", "-1"], ["--head", "fcn"], ["--backbone-option", "width"],
                                   ["--aspp-rates", "0,2"], ["--aspp-rates", "1.5"]])
def test_train_seg_rejects_bad_flags(demo, tmp_path, flags, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(train_args(demo, tmp_path / "run", *flags))
    assert exc.value.code == 2 and flags[0] in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--scales", "0"], ["--scales", "1,x"], ["--batch-size", "0"]])
def test_infer_seg_rejects_bad_flags(demo, trained, tmp_path, flags, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(infer_args(trained, demo, tmp_path / "pred", *flags))
    assert exc.value.code == 2 and flags[0] in capsys.readouterr().err


def test_infer_seg_refuses_a_missing_or_foreign_model(demo, tmp_path, capsys):
    assert cli.main(infer_args(tmp_path / "nothing", demo, tmp_path / "pred")) == 2
    assert "no trained model at" in capsys.readouterr().err
    torch.save({"model": {}, "metadata": {"kind": "classifier"}}, tmp_path / FINAL)
    assert cli.main(infer_args(tmp_path / FINAL, demo, tmp_path / "pred")) == 2
    assert "'classifier' model; expected 'segmentation'" in capsys.readouterr().err
