"""``wsss-fast train-seg``: trains DeepLab (ASPP or LargeFOV) on label maps."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError
from . import (add_device_flags, default_device, int_at_least, key_value, non_negative_float, output_dir,
               positive_float)


def _scale_range(text: str) -> tuple[float, float]:
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got {text!r}")
    low, high = (positive_float(p) for p in parts)
    if low > high:
        raise argparse.ArgumentTypeError(f"LOW must not exceed HIGH, got {text!r}")
    return low, high


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train-seg", help="train DeepLab on pseudo-label PNGs",
        description="DeepLab-v2 ASPP (default: ResNet-101) or DeepLab-LargeFOV (VGG-16) trained with "
                    "cross-entropy on label maps (255 ignored), with the references' settings. Writes "
                    "OUT/checkpoint.pt each epoch, OUT/log.jsonl and OUT/final.pt.")
    p.add_argument("--voc", type=Path, required=True, metavar="ROOT", help="VOC-style root (images)")
    p.add_argument("--split", default="train_aug", help="split name or list file (default train_aug)")
    p.add_argument("--labels", type=Path, required=True, metavar="DIR",
                   help="label PNGs <name>.png for every image of the split (pseudo labels; 255 ignored)")
    p.add_argument("--out", type=output_dir, required=True, metavar="DIR", help="run folder")
    p.add_argument("--head", choices=("aspp", "largefov"), default="aspp", help="segmentation head (default aspp)")
    p.add_argument("--backbone", metavar="NAME",
                   help="registry backbone (default: resnet101 for aspp, vgg16_d1 without DRS and without "
                        "its extra convolutions for largefov)")
    p.add_argument("--backbone-option", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="backbone option (VALUE parsed as YAML, e.g. width=8), repeatable; added to the "
                        "default backbone's options")
    p.add_argument("--init", metavar="PATH",
                   help="a classifier's final.pt (or its folder): start from its backbone (architecture and "
                        "weights, unless --weights replaces them)")
    p.add_argument("--weights", metavar="FILE",
                   help="backbone weights, a .pth file (ImageNet or COCO-pretrained; 'imagenet' where the "
                        "backbone's package ships them); default: random initialisation")
    p.add_argument("--iterations", type=int_at_least(1), metavar="N",
                   help="training steps, rounded up to whole epochs; overrides --epochs (default 20000 "
                        "when neither is given)")
    p.add_argument("--epochs", type=int_at_least(1), metavar="N", help="epochs, when --iterations is not given")
    p.add_argument("--batch-size", type=int_at_least(1), default=10, metavar="N", help="default 10")
    p.add_argument("--lr", type=positive_float, default=2.5e-4, help="base learning rate (default 2.5e-4; "
                   "x10 for the head)")
    p.add_argument("--weight-decay", type=non_negative_float, default=5e-4, help="default 5e-4")
    p.add_argument("--crop", type=int_at_least(8), default=321, metavar="PX", help="crop side (default 321)")
    p.add_argument("--scale-range", type=_scale_range, default=(0.5, 1.5), metavar="LOW,HIGH",
                   help="random rescale factor range (default 0.5,1.5)")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT from its last checkpoint")
    add_device_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from ..stages.segment import TRAIN_DEFAULTS, train_segmentation
    from ..stages.segment.train import ITERATIONS

    if args.weight_decay < 0:
        raise UsageError(f"--weight-decay must be >= 0, got {args.weight_decay}")
    iterations = args.iterations if args.iterations is not None else (
        None if args.epochs is not None else ITERATIONS)
    cfg = replace(TRAIN_DEFAULTS, epochs=args.epochs or 1, batch_size=args.batch_size, lr=args.lr,
                  weight_decay=args.weight_decay, seed=args.seed,
                  num_workers=TRAIN_DEFAULTS.num_workers if args.num_workers is None else args.num_workers)
    final = train_segmentation(args.voc, args.split, args.labels, args.out, head=args.head,
                               backbone=args.backbone, backbone_options=dict(args.backbone_option),
                               weights=args.weights, classifier=args.init,
                               cfg=cfg, iterations=iterations, crop=args.crop, scale=args.scale_range,
                               resume=args.resume, device=default_device(args.device),
                               progress=not args.no_progress)
    print(f"train-seg: wrote {final}")
