"""DeepLab-v2 as kazuto1011/deeplab-pytorch trains and tests it: the
reference recipe (multi-scale inputs, labels shrunk as PIL does, discrete
rescale, padding, lr every 10 steps, exact iterations), the optimiser
groups, the Caffe ResNet-101 layout and input, and the converter of its
weight files (file and line of each reference value next to it)."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cam_fixtures import one_thread  # noqa: F401
from schedule_utils import training_steps
from wsss_fast import cli
from wsss_fast.data.demo import make_demo_data
from wsss_fast.models import build_backbone
from wsss_fast.models.convert import deeplab_pytorch_state
from wsss_fast.models.deeplab import DeepLab, msc_logits, segmentation_loss, shrink_labels
from wsss_fast.models.resnet101 import CAFFE_MEAN_BGR, ResNet101, caffe_input
from wsss_fast.models.weights import WeightsError
from wsss_fast.stages.segment.train import REFERENCE_POLY_EVERY, REFERENCE_RECIPE, TRAIN_DEFAULTS
from wsss_fast.training import GROUP_NAMES, build_optimizer
from wsss_fast.transforms import normalize

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")


def test_reference_recipe_is_deeplab_pytorch():
    r = REFERENCE_RECIPE
    assert r.crop == 321                                    # configs/voc12.yaml:27 SIZE.TRAIN 321
    assert r.scale_choices == (0.5, 0.75, 1.0, 1.25, 1.5)   # voc12.yaml:11 SCALES; base.py:68 random.choice
    assert r.msc == (0.5, 0.75)                             # libs/models/__init__.py:38 MSC scales [0.5, 0.75]
    assert r.loss_at == "logits"                            # main.py:232-236 labels resized to each logit
    assert (r.pad_at, r.pad_mean) == ("end", "caffe")       # base.py:78-87 pad bottom/right with mean_bgr
    assert REFERENCE_POLY_EVERY == 10                       # voc12.yaml:44 LR_DECAY 10
    d = TRAIN_DEFAULTS
    assert (d.lr, d.momentum, d.weight_decay, d.poly_power) == (2.5e-4, 0.9, 5e-4, 0.9)  # voc12.yaml:45-49
    assert d.batch_size == 5 * 2                            # voc12.yaml:38 BATCH_SIZE.TRAIN 5, :41 ITER_SIZE 2
    assert CAFFE_MEAN_BGR == (104.008, 116.669, 122.675)    # voc12.yaml:22-24 MEAN R/G/B


def reference_lr(iterations: int, iter_max: int, base: float, step_size: int = 10, power: float = 0.9):
    """The lr each iteration uses: libs/utils/lr_scheduler.py:19-29 (poly of
    last_epoch, recomputed only when last_epoch % step_size == 0, not past
    iter_max), stepped with epoch=iteration after each update (main.py:250)."""
    lr, out = base, []
    for iteration in range(1, iterations + 1):
        out.append(lr)
        if iteration % step_size == 0 and iteration <= iter_max:
            lr = base * (1 - iteration / iter_max) ** power
    return out


def test_lr_every_10_iterations_and_exact_iterations(tmp_path):
    cfg = replace(TRAIN_DEFAULTS, epochs=4, poly_every=REFERENCE_POLY_EVERY, max_steps=35, num_workers=0)
    steps = training_steps(cfg, 100, tmp_path)              # 10 steps per epoch, stopped after 35
    assert len(steps) == 35
    expected = reference_lr(35, 35, 2.5e-4)
    mult = dict(zip(GROUP_NAMES, (1, 2, 10, 20)))           # main.py:163-178 (no backbone biases exist)
    for lr, step in zip(expected, steps):
        for g in GROUP_NAMES:
            assert step["lr"][g] == pytest.approx(lr * mult[g], rel=1e-12)
    assert steps[0]["weight_decay"]["new_bias"] == 0.0      # main.py:177 20x group: weight_decay 0
    assert steps[0]["weight_decay"]["new_weight"] == 5e-4   # main.py:172


def test_parameter_groups_of_the_reference_network():
    """main.py:48-66 get_params: 1x every conv of the "layer*" modules (the
    Caffe ResNet has no conv biases; BN frozen, not optimised, :208), 10x the
    ASPP weights, 20x the ASPP biases."""
    net = DeepLab(ResNet101(layout="deeplab"), 21)
    groups = net.param_groups()
    convs = 1 + 3 * (3 + 4 + 23 + 3) + 4                    # stem, 3 per bottleneck, 4 shortcuts
    assert [len(groups[g]) for g in GROUP_NAMES] == [convs, 0, 4, 4]
    lrs = {g["name"]: (g["lr"], g["weight_decay"]) for g in build_optimizer(groups, TRAIN_DEFAULTS).param_groups}
    assert lrs == {"pretrained_weight": (2.5e-4, 5e-4), "new_weight": (2.5e-3, 5e-4), "new_bias": (5e-3, 0.0)}


def test_caffe_layout_strides_dilations_and_sizes():
    net = ResNet101(layout="deeplab")
    assert net.maxpool.ceil_mode                            # resnet.py:110 MaxPool2d(3, 2, 1, ceil_mode=True)
    first = net.layer2[0]
    assert first.conv1.stride == (2, 2) and first.conv2.stride == (1, 1)  # resnet.py:57-58 stride in "reduce"
    assert {b.conv2.dilation for b in net.layer3} == {(2, 2)}  # deeplabv2.py:50 layer4 dilation 2, resnet.py:95
    assert {b.conv2.dilation for b in net.layer4} == {(4, 4)}  # deeplabv2.py:51 layer5 dilation 4
    tv = ResNet101()
    assert tv.layer2[0].conv2.stride == (2, 2) and tv.layer3[0].conv2.dilation == (1, 1)

    def caffe_size(side):  # conv 7x7/2 pad 3, ceil max pool 3/2 pad 1, 1x1 stride-2 "reduce"
        side = (side + 6 - 7) // 2 + 1
        side = -(-(side + 2 - 3) // 2) + 1
        return (side - 1) // 2 + 1

    with torch.no_grad():
        for side in (97, 321):
            assert net.eval()(torch.zeros(1, 3, side, side)).shape[-1] == caffe_size(side)


def test_caffe_input_is_bgr_minus_mean():
    """libs/datasets/voc.py:84 cv2.imread (BGR, 0..255); base.py:110
    image -= mean_bgr, no scaling."""
    image = torch.randint(0, 256, (2, 3, 5, 6)).float()
    expected = image.flip(1) - torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    torch.testing.assert_close(caffe_input(normalize(image)), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("size, out", [((321, 321), (41, 41)), ((160, 160), (21, 21)), ((321, 321), (31, 31)),
                                       ((300, 200), (38, 25)), ((97, 131), (13, 17)), ((41, 41), (41, 41))])
def test_labels_shrink_exactly_as_pil_nearest(size, out):
    """main.py:70-82 resize_labels: Image.fromarray(label).resize(size, NEAREST)."""
    label = np.random.default_rng(0).integers(0, 21, size).astype(np.float32)
    expected = np.asarray(Image.fromarray(label).resize(out[::-1], resample=Image.NEAREST))
    got = shrink_labels(torch.from_numpy(label).long()[None], out)[0]
    np.testing.assert_array_equal(got.numpy(), expected)


class Pool8(nn.Module):
    """A stand-in network: 1x1 conv to 3 classes after 8x8 average pooling."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(F.avg_pool2d(x, 8, ceil_mode=True))


def test_msc_logits_and_four_losses():
    """libs/models/msc.py:26-45: logits of x, of x scaled by 0.5 and 0.75
    (F.interpolate scale_factor, bilinear, align_corners False), and their
    element-wise max at the first logits' size; main.py:232-236 one loss each."""
    torch.manual_seed(0)
    net, x = Pool8(), torch.randn(2, 3, 321, 321)
    out = msc_logits(net, x, (0.5, 0.75))
    sides = [321, 321 * 1 // 2, 321 * 3 // 4, 321]           # msc.py:37 scale_factor: floor(321 * p)
    assert [tuple(o.shape[-2:]) for o in out] == [(-(-n // 8),) * 2 for n in sides]
    l1 = net(x)
    scaled = [net(F.interpolate(x, scale_factor=p, mode="bilinear", align_corners=False)) for p in (0.5, 0.75)]
    up = [F.interpolate(s, size=(41, 41), mode="bilinear", align_corners=False) for s in scaled]
    torch.testing.assert_close(out[-1], torch.max(torch.stack([l1, *up]), dim=0)[0])
    target = torch.randint(0, 3, (2, 321, 321))
    target[:, :10] = 255
    criterion = nn.CrossEntropyLoss(ignore_index=255)
    for logits in out:
        labels = torch.from_numpy(np.stack([np.asarray(Image.fromarray(t.float().numpy()).resize(
            logits.shape[-2:][::-1], resample=Image.NEAREST)) for t in target])).long()
        assert segmentation_loss(logits, target, "logits").item() == pytest.approx(
            criterion(logits, labels).item(), rel=1e-5)


def test_reference_augment_scales_pads_at_the_end_with_the_caffe_mean():
    augment = REFERENCE_RECIPE.augment()
    rng = np.random.default_rng(0)
    sizes = {augment.size(200, 300, rng) for _ in range(200)}
    assert sizes == {(int(200 * s), int(300 * s)) for s in (0.5, 0.75, 1.0, 1.25, 1.5)}  # base.py:68-69
    image = torch.randint(0, 256, (3, 100, 150), dtype=torch.uint8)
    item = {"image": image, "target": torch.ones(100, 150, dtype=torch.int64)}
    for seed in range(20):
        out = augment(item, np.random.default_rng(seed))
        assert out["image"].shape == (3, 321, 321)
        target = out["target"]
        rows, cols = (target != 255).any(1).nonzero(), (target != 255).any(0).nonzero()
        assert rows.min() == 0 and cols.min() == 0          # base.py:78-82 padded at the bottom and right
        pad = caffe_input(out["image"][None])[0][:, target == 255]
        assert pad.abs().max() < 1e-3                       # base.py:86 filled with mean_bgr: 0 after :110


def synthetic_deeplab_pytorch(prefix: str, head: str) -> dict[str, torch.Tensor]:
    """A state dict with the keys and shapes of deeplab-pytorch's networks:
    libs/models/resnet.py (_Stem "layer1.conv1", _ResLayer blocks with
    _ConvBnReLU "reduce" (stride, 1x1), "conv3x3", "increase", "shortcut",
    each "conv" (no bias) + "bn"), deeplabv2.py:47-52 layer2..5 of [3, 4, 23,
    3] blocks, 64 -> 256 -> 512 -> 1024 -> 2048 channels, mid = out / 4;
    head "aspp": _ASPP c0..c3 (21, 2048, 3, 3) with bias (deeplabv2.py, the
    MSC model's "base." prefix, convert.py:174); head "fc": DeepLabV1's COCO
    classifier (91, 2048, 1, 1) (deeplabv1.py, convert.py:182 no prefix)."""
    g = torch.Generator().manual_seed(0)
    state = {}

    def conv_bn(name, cout, cin, k):
        state[f"{prefix}{name}.conv.weight"] = torch.randn(cout, cin, k, k, generator=g) * 0.05
        for p, v in (("weight", torch.rand(cout, generator=g) + 0.5), ("bias", torch.randn(cout, generator=g) * 0.1),
                     ("running_mean", torch.randn(cout, generator=g) * 0.1),
                     ("running_var", torch.rand(cout, generator=g) + 0.5)):
            state[f"{prefix}{name}.bn.{p}"] = v
        state[f"{prefix}{name}.bn.num_batches_tracked"] = torch.tensor(0)

    conv_bn("layer1.conv1", 64, 3, 7)
    cin = 64
    for layer, (blocks, cout) in zip(range(2, 6), ((3, 256), (4, 512), (23, 1024), (3, 2048))):
        for b in range(1, blocks + 1):
            name, width, inp = f"layer{layer}.block{b}", cout // 4, cin if b == 1 else cout
            conv_bn(f"{name}.reduce", width, inp, 1)
            conv_bn(f"{name}.conv3x3", width, width, 3)
            conv_bn(f"{name}.increase", cout, width, 1)
            if b == 1:
                conv_bn(f"{name}.shortcut", cout, inp, 1)
        cin = cout
    if head == "aspp":
        for i in range(4):
            state[f"{prefix}aspp.c{i}.weight"] = torch.randn(21, 2048, 3, 3, generator=g) * 0.01
            state[f"{prefix}aspp.c{i}.bias"] = torch.randn(21, generator=g)
    else:
        state["fc.weight"] = torch.randn(91, 2048, 1, 1, generator=g)
        state["fc.bias"] = torch.randn(91, generator=g)
    return state


def test_converter_loads_a_msc_checkpoint_into_our_deeplab():
    state = synthetic_deeplab_pytorch("base.", "aspp")
    converted, dropped = deeplab_pytorch_state(state)
    assert dropped == []
    net = DeepLab(ResNet101(layout="deeplab"), 21)
    net.load_state_dict(converted, strict=True)
    torch.testing.assert_close(net.head.branches[3].bias, state["base.aspp.c3.bias"])
    torch.testing.assert_close(net.backbone.layer2[0].downsample[0].weight, state["base.layer3.block1.shortcut.conv.weight"])
    torch.testing.assert_close(net.backbone.layer4[2].bn3.running_var, state["base.layer5.block3.increase.bn.running_var"])


@pytest.fixture(scope="module")
def coco_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("coco") / "deeplabv1_resnet101-coco.pth"
    torch.save(synthetic_deeplab_pytorch("", "fc"), path)
    return path


def test_backbone_takes_the_coco_file_and_the_script_converts_it(coco_file, tmp_path):
    net = build_backbone("resnet101", coco_file, layout="deeplab")
    assert net.load_report.missing == [] and net.load_report.unexpected == []
    src = synthetic_deeplab_pytorch("", "fc")
    torch.testing.assert_close(net.conv1.weight, src["layer1.conv1.conv.weight"])
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "convert_weights.py"), "deeplab-resnet101",
                          str(coco_file), str(tmp_path / "r101.pth")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "dropped 2 classifier and 0 ASPP tensors" in out.stdout
    again = build_backbone("resnet101", tmp_path / "r101.pth", layout="deeplab")
    for (k, a), b in zip(net.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_malicious_or_broken_weight_files_fail_in_one_line(tmp_path, capsys):
    marker = str(tmp_path / "code-ran")
    torch.save({"layer1.conv1.conv.weight": Evil(marker)}, tmp_path / "evil.pth")
    (tmp_path / "broken.pth").write_bytes(b"\x80\x02garbage" * 20)
    for name, reason in (("evil.pth", "could run code"), ("broken.pth", "")):
        with pytest.raises(WeightsError) as info:
            build_backbone("resnet101", tmp_path / name, layout="deeplab")
        message = str(info.value)
        assert "\n" not in message and name in message and reason in message
    assert not os.path.exists(marker)
    code = subprocess.run([sys.executable, str(ROOT / "scripts" / "convert_weights.py"), "deeplab-resnet101",
                           str(tmp_path / "evil.pth"), str(tmp_path / "out.pth")], capture_output=True, text=True)
    assert code.returncode == 2 and len(code.stderr.strip().splitlines()) == 1 and not os.path.exists(marker)
    bad = {"layer1.conv1.conv.weight": torch.zeros(1), "layer9.block1.reduce.conv.weight": torch.zeros(1)}
    with pytest.raises(WeightsError, match="layer9.block1"):
        deeplab_pytorch_state(bad)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("dl") / "demo"
    make_demo_data(root, n_train=12, n_val=4, size=48, progress=False)
    return root


def test_train_and_infer_seg_reference_path(demo, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train-seg", "--voc", str(demo), "--split", "train", "--labels", str(demo / "SegmentationClass"),
                     "--out", str(out), "--backbone", "scratch", "--backbone-option", "width=4", "--iterations", "5",
                     "--batch-size", "4", "--crop", "48", "--lr", "0.01", "--reference", "--num-workers", "0",
                     "--device", "cpu", "--no-progress"]) == 0
    log = [line for line in open(out / "log.jsonl")]
    start = __import__("json").loads(log[0])
    assert start["config"]["poly_every"] == 10 and start["config"]["max_steps"] == 5
    assert start["config"]["extra"]["recipe"]["msc"] == [0.5, 0.75]
    assert cli.main(["infer-seg", "--model", str(out), "--voc", str(demo), "--out", str(tmp_path / "pred"),
                     "--reference", "--no-eval", "--num-workers", "0", "--device", "cpu", "--cpu-precision", "float32",
                     "--no-progress"]) == 0  # float32: compared exactly with the model's float32 forward below
    from wsss_fast.models.checkpoints import load_deeplab
    from wsss_fast.storage import load_label_png

    model, _ = load_deeplab(out)
    name = sorted(p.stem for p in (tmp_path / "pred").glob("*.png"))[0]
    image = torch.from_numpy(np.array(Image.open(demo / "JPEGImages" / f"{name}.jpg").convert("RGB"))).permute(2, 0, 1)
    with torch.no_grad():
        logits = model(normalize(image[None]), msc=(0.5, 0.75))[-1]  # main.py:323 the MSC model's test output
        up = F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
    np.testing.assert_array_equal(load_label_png(tmp_path / "pred" / f"{name}.png"), up.argmax(1)[0].numpy())
