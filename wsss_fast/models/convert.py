"""Conversion of other frameworks' and the references' weight files to our
layouts, without those frameworks.

- MXNet's ImageNet ResNet-38 (below) to PSA's module names.
- PSA's ResNet-38 classifier (``res38_cls.pth``, SC-CAM's round 0) to
  :class:`wsss_fast.models.Classifier`: :func:`psa_classifier_state`.
- deeplab-pytorch's Caffe-derived ResNet-101 DeepLab files (the COCO
  initialisation ``deeplabv1_resnet101-coco.pth`` and
  ``DeepLabV2_ResNet101_MSC`` checkpoints) to :class:`wsss_fast.models.DeepLab`
  on ``resnet101(layout="deeplab")``: :func:`deeplab_pytorch_state`.

MXNet ``.params`` files (``mx.nd.save``; the ImageNet ResNet-38 of PSA and
SC-CAM, ``ilsvrc-cls_rna-a1_cls1000_ep-0001.params``) are parsed with numpy.
Their layout, little-endian::

    uint64 0x112, uint64 0                 list magic, reserved
    uint64 n, then n NDArrays:
        uint32 magic                       0xF993FAC9 (v2), 0xF993FACA (v3),
                                           0xF993FAC8 (v1); anything else is
                                           the ndim of a legacy array
        v2 / v3: int32 storage type        0: dense (sparse is not supported)
        shape                              v1 / v2 / v3: int32 ndim, int64 dims;
                                           legacy: uint32 dims
        (an array without dimensions -- ndim 0, or -1 in v3 -- ends here)
        int32 dev_type, int32 dev_id       where it was saved from (ignored)
        int32 dtype                        0 f32, 1 f64, 2 f16, 3 u8, 4 i32, 5 i8, 6 i64
        raw data, C order
    uint64 m, then m names (uint64 length + bytes): "arg:<name>" for
        parameters, "aux:<name>" for BatchNorm statistics

Names of the ResNet-38 file map to PSA's module names as PSA's converter does:
``conv1a_weight`` -> ``conv1a.weight``; ``res4b3_branch2a_weight`` ->
``b4_3.conv_branch2a.weight`` (block ``a`` is ``b4``, ``bK`` is ``b4_K``);
``bn5a_branch2b1_gamma`` -> ``b5.bn_branch2b1.weight`` (beta -> bias,
moving_mean -> running_mean, moving_var -> running_var); ``bn7_*`` ->
``bn7.*``; the ImageNet classifier ``linear1000_*`` is dropped.
"""
from __future__ import annotations

import math
import os
import re
import struct
from pathlib import Path

import numpy as np
import torch

from .weights import WeightsError

LIST_MAGIC = 0x112
_V1, _V2, _V3 = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
_DTYPES = {0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8, 6: np.int64}
_MAX_NDIM = 32


class _Reader:
    def __init__(self, data: bytes, origin: str):
        self.data = data
        self.pos = 0
        self.origin = origin

    def unpack(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise WeightsError(f"{self.origin}: truncated MXNet file (needed {size} bytes at offset {self.pos})")
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values

    def take(self, size: int) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise WeightsError(f"{self.origin}: truncated MXNet file (needed {size} bytes at offset {self.pos})")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk


def _read_ndarray(r: _Reader) -> np.ndarray | None:
    (magic,) = r.unpack("<I")
    if magic in (_V2, _V3):
        (stype,) = r.unpack("<i")
        if stype != 0:
            raise WeightsError(f"{r.origin}: sparse NDArrays (storage type {stype}) are not supported")
    if magic in (_V1, _V2, _V3):
        (ndim,) = r.unpack("<i")
        if ndim > _MAX_NDIM:
            raise WeightsError(f"{r.origin}: not an MXNet NDArray file (array with {ndim} dimensions)")
        shape = r.unpack(f"<{max(ndim, 0)}q")
        empty = ndim == -1 if magic == _V3 else ndim == 0
    else:  # legacy array: the magic is its ndim, dims are uint32
        if magic > _MAX_NDIM:
            raise WeightsError(f"{r.origin}: not an MXNet NDArray file (unknown array magic {magic:#x})")
        shape = r.unpack(f"<{magic}I")
        empty = magic == 0
    if empty:
        return None
    r.unpack("<ii")  # context the array was saved from
    (dtype,) = r.unpack("<i")
    if dtype not in _DTYPES:
        raise WeightsError(f"{r.origin}: unknown MXNet dtype flag {dtype}")
    if any(d < 0 for d in shape):
        raise WeightsError(f"{r.origin}: array of unknown shape {shape}")
    np_dtype = np.dtype(_DTYPES[dtype]).newbyteorder("<")
    count = math.prod(shape)  # exact: numpy's int64 product would wrap for a crafted shape
    if count * np_dtype.itemsize > len(r.data) - r.pos:
        raise WeightsError(f"{r.origin}: array of shape {tuple(shape)} is larger than the rest of the file "
                           "(truncated or not an MXNet file)")
    raw = r.take(count * np_dtype.itemsize)
    return np.frombuffer(raw, dtype=np_dtype).reshape(shape).astype(np_dtype.newbyteorder("="))


def read_mxnet_params(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The named arrays of an MXNet ``.params`` / NDArray list file, names as
    stored (with their ``arg:`` / ``aux:`` prefixes). Raises WeightsError
    naming the file when it is missing or not such a file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    r = _Reader(path.read_bytes(), str(path))
    magic, _reserved = r.unpack("<QQ")
    if magic != LIST_MAGIC:
        raise WeightsError(f"{path} is not an MXNet NDArray file (header {magic:#x}, expected {LIST_MAGIC:#x})")
    (count,) = r.unpack("<Q")
    arrays = [_read_ndarray(r) for _ in range(count)]
    (name_count,) = r.unpack("<Q")
    names = [r.take(r.unpack("<Q")[0]).decode("utf-8") for _ in range(name_count)]
    if name_count != count:
        raise WeightsError(f"{path}: {count} arrays but {name_count} names; PSA's files are named lists")
    if r.pos != len(r.data):
        raise WeightsError(f"{path}: {len(r.data) - r.pos} unexpected bytes after the arrays")
    return {name: array for name, array in zip(names, arrays) if array is not None}


_BN_PARAMS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_var": "running_var"}
_BLOCK = re.compile(r"(res|bn)(\d)(a|b\d+)_(branch(?:1|2a|2b\d))_(weight|gamma|beta|moving_mean|moving_var)")
_BN7 = re.compile(r"bn7_(gamma|beta|moving_mean|moving_var)")


def psa_resnet38_name(mxnet_name: str) -> str | None:
    """PSA's module name of a ResNet-38 MXNet parameter (prefix ``arg:`` /
    ``aux:`` optional), None for the ImageNet classifier. Raises
    WeightsError for names that are not ResNet-38's."""
    name = re.sub(r"^(arg|aux):", "", mxnet_name)
    if name == "conv1a_weight":
        return "conv1a.weight"
    if name.startswith("linear1000_"):
        return None
    m = _BN7.fullmatch(name)
    if m:
        return f"bn7.{_BN_PARAMS[m.group(1)]}"
    m = _BLOCK.fullmatch(name)
    if m:
        kind, stage, block, branch, param = m.groups()
        module = f"b{stage}" if block == "a" else f"b{stage}_{block[1:]}"
        if kind == "res" and param == "weight":
            return f"{module}.conv_{branch}.weight"
        if kind == "bn" and param in _BN_PARAMS:
            return f"{module}.bn_{branch}.{_BN_PARAMS[param]}"
    raise WeightsError(f"MXNet parameter {mxnet_name!r} is not one of ResNet-38's")


def resnet38_state_from_mxnet(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], list[str]]:
    """PSA-format ResNet-38 state dict (float32) from MXNet's ImageNet
    ``.params`` file, and the MXNet names it leaves out (the 1000-class
    classifier)."""
    state, dropped = {}, []
    for mx_name, array in read_mxnet_params(path).items():
        name = psa_resnet38_name(mx_name)
        if name is None:
            dropped.append(mx_name)
        else:
            state[name] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return state, dropped


def psa_classifier_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our Classifier's keys for PSA's / SC-CAM's round-0 ResNet-38
    classifier (network/resnet38_cls.py: the backbone's modules at the top
    level, ``fc8`` the 1x1 class head without bias): ``fc8.weight`` ->
    ``head.weight``, every other key -> ``backbone.<key>``."""
    if "fc8.weight" not in state:
        raise WeightsError("not a PSA classifier state dict: it has no fc8.weight (the class head)")
    return {("head.weight" if k == "fc8.weight" else f"backbone.{k}"): v for k, v in state.items()}


# deeplab-pytorch (libs/models/resnet.py, deeplabv2.py): _Stem "layer1.conv1",
# _ResLayer "layer2".."layer5" of _Bottleneck "block<i>" with _ConvBnReLU
# "reduce" / "conv3x3" / "increase" / "shortcut" ("conv" + "bn" each), and
# _ASPP "aspp.c<i>"; DeepLabV1's 91-class COCO classifier "fc" (dropped).
# One rule per part: its pattern and our name (None: dropped).
_DL_BRANCH = {("reduce", "conv"): "conv1", ("reduce", "bn"): "bn1", ("conv3x3", "conv"): "conv2",
              ("conv3x3", "bn"): "bn2", ("increase", "conv"): "conv3", ("increase", "bn"): "bn3",
              ("shortcut", "conv"): "downsample.0", ("shortcut", "bn"): "downsample.1"}
_DL_RULES = (
    (re.compile(r"fc\.(weight|bias)"), lambda m: None),
    (re.compile(r"layer1\.conv1\.(conv|bn)\.(\w+)"),
     lambda m: f"backbone.{'conv1' if m[1] == 'conv' else 'bn1'}.{m[2]}"),
    (re.compile(r"layer([2-5])\.block(\d+)\.(reduce|conv3x3|increase|shortcut)\.(conv|bn)\.(\w+)"),
     lambda m: f"backbone.layer{int(m[1]) - 1}.{int(m[2]) - 1}.{_DL_BRANCH[m[3], m[4]]}.{m[5]}"),
    (re.compile(r"aspp\.c(\d+)\.(weight|bias)"), lambda m: f"head.branches.{m[1]}.{m[2]}"),
)
_DL_PREFIX = re.compile(r"^(module\.)?(base\.)?")


def deeplab_pytorch_name(key: str) -> str | None:
    """Our DeepLab key (``backbone.*``, ``head.branches.*``) of a
    deeplab-pytorch key (``base.`` / ``module.`` prefixes optional); None
    for DeepLab-v1's COCO classifier ``fc.*``. Raises WeightsError for a key
    of neither network."""
    name = _DL_PREFIX.sub("", key)
    for pattern, ours in _DL_RULES:
        m = pattern.fullmatch(name)
        if m:
            return ours(m)
    raise WeightsError(f"{key!r} is not a deeplab-pytorch ResNet-101 DeepLab key")


def is_deeplab_pytorch(state: dict) -> bool:
    """Whether a state dict has deeplab-pytorch's key names (its stem)."""
    return any(_DL_PREFIX.sub("", k) == "layer1.conv1.conv.weight" for k in state)


def deeplab_pytorch_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Our DeepLab state dict (float32) of a deeplab-pytorch one, and the
    keys it leaves out (DeepLab-v1's COCO classifier)."""
    out, dropped = {}, []
    for key, value in state.items():
        name = deeplab_pytorch_name(key)
        if name is None:
            dropped.append(key)
        else:
            out[name] = value.float() if value.is_floating_point() else value
    return out, dropped
