#!/usr/bin/env python
"""Converts weight files to the layouts wsss-fast's backbones load.

    python scripts/convert_weights.py mxnet-resnet38 SRC.params DST.pth
        MXNet's ImageNet ResNet-38 of PSA / SC-CAM
        (ilsvrc-cls_rna-a1_cls1000_ep-0001.params) to a PSA-format state dict,
        the file PSA's own converter makes with MXNet installed; no MXNet
        needed here. The 1000-class classifier is dropped.
        (The resnet38 backbone also takes the .params file directly.)

    python scripts/convert_weights.py deeplab-resnet101 SRC.pth DST.pth
        deeplab-pytorch's Caffe-derived ResNet-101 (the COCO initialisation
        deeplabv1_resnet101-coco.pth, or a DeepLabV2_ResNet101_MSC
        checkpoint) to our resnet101 backbone's keys, for
        --backbone-option layout=deeplab; its COCO classifier and ASPP are
        dropped. (The resnet101 backbone also takes the file directly.)

    python scripts/convert_weights.py state-dict SRC DST.pth
        A plain state dict from a training checkpoint: takes the dict under
        "state_dict" or "model" if there is one, and strips the "module."
        prefixes of DataParallel / DistributedDataParallel.

The output is written atomically (a temporary file renamed at the end).
Prints how many tensors were written and what was dropped.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wsss_fast.errors import WsssFastError  # noqa: E402
from wsss_fast.models.convert import deeplab_pytorch_state, resnet38_state_from_mxnet  # noqa: E402
from wsss_fast.models.weights import read_state_dict  # noqa: E402
from wsss_fast.storage import atomic_output  # noqa: E402


def _save(state: dict[str, torch.Tensor], dst: Path) -> None:
    with atomic_output(dst) as tmp:
        torch.save(state, tmp)


def convert_mxnet_resnet38(src: Path, dst: Path) -> None:
    state, dropped = resnet38_state_from_mxnet(src)
    _save(state, dst)
    print(f"{dst}: {len(state)} tensors in PSA's ResNet-38 layout; dropped {', '.join(dropped) or 'nothing'}")


def convert_deeplab_resnet101(src: Path, dst: Path) -> None:
    converted, classifier = deeplab_pytorch_state(read_state_dict(src))
    state = {k.removeprefix("backbone."): v for k, v in converted.items() if k.startswith("backbone.")}
    _save(state, dst)
    print(f"{dst}: {len(state)} tensors in wsss-fast's resnet101 (layout=deeplab) layout; dropped "
          f"{len(classifier)} classifier and {len(converted) - len(state)} ASPP tensors")


def convert_state_dict(src: Path, dst: Path) -> None:
    state = read_state_dict(src)
    _save(state, dst)
    print(f"{dst}: {len(state)} tensors")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("mxnet-resnet38", "deeplab-resnet101", "state-dict"),
                        help="what to convert")
    parser.add_argument("src", type=Path, help="input file")
    parser.add_argument("dst", type=Path, help="output .pth file")
    args = parser.parse_args(argv)
    try:
        if args.kind == "mxnet-resnet38":
            convert_mxnet_resnet38(args.src, args.dst)
        elif args.kind == "deeplab-resnet101":
            convert_deeplab_resnet101(args.src, args.dst)
        else:
            convert_state_dict(args.src, args.dst)
    except WsssFastError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
