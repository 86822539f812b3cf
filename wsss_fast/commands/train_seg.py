"""``wsss-fast train-seg``: trains DeepLab (ASPP, LargeFOV or decoder head) on label maps."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError
from . import (add_device_flags, default_device, int_at_least, key_value, non_negative_float, output_dir,
               positive_float)

# What --reference stands for (deeplab-pytorch; the backbone option when the
# backbone is the default resnet101); tests/test_reference_table.py checks it.
REFERENCE_FLAGS = ("--msc", "0.5,0.75", "--loss-at", "logits", "--scale-choices", "0.5,0.75,1,1.25,1.5",
                   "--poly-every", "10", "--pad-at", "end", "--pad-mean", "caffe", "--backbone-option",
                   "layout=deeplab")


def _scale_range(text: str) -> tuple[float, float]:
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got {text!r}")
    low, high = (positive_float(p) for p in parts)
    if low > high:
        raise argparse.ArgumentTypeError(f"LOW must not exceed HIGH, got {text!r}")
    return low, high


def _factors(text: str) -> tuple[float, ...]:
    return tuple(positive_float(t) for t in text.split(","))


def _rates(text: str) -> tuple[int, ...]:
    return tuple(int_at_least(1)(t) for t in text.split(","))


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train-seg", help="train DeepLab on pseudo-label PNGs",
        description="DeepLab-v2 ASPP (default: ResNet-101), DeepLab-LargeFOV (VGG-16) or wsss-fast's decoder "
                    "head trained with "
                    "cross-entropy on label maps (255 ignored), with the references' settings. Writes "
                    "OUT/checkpoint.pt each epoch, OUT/log.jsonl and OUT/final.pt.")
    p.add_argument("--voc", type=Path, required=True, metavar="ROOT", help="VOC-style root (images)")
    p.add_argument("--split", default="train_aug", help="split name or list file (default train_aug)")
    p.add_argument("--labels", type=Path, required=True, metavar="DIR",
                   help="label PNGs <name>.png for every image of the split (pseudo labels; 255 ignored)")
    p.add_argument("--out", type=output_dir, required=True, metavar="DIR", help="run folder")
    p.add_argument("--head", choices=("aspp", "largefov", "decoder"), default="aspp",
                   help="segmentation head: aspp (DeepLab-v2, default), largefov (DeepLab-LargeFOV) or decoder "
                        "(not in the references: a nonlinear ASPP and DeepLab-v3+'s stride-4 decoder, for light "
                        "backbones on small images; needs a backbone with a stride-4 map, e.g. efficientnet_lite0)")
    p.add_argument("--aspp-rates", type=_rates, metavar="R,R,...",
                   help="dilation rates of the ASPP branches (aspp and decoder heads; default 6,12,18,24, "
                        "DeepLab-v2's for 321 px crops; the demo's 128 px images take 1,2,3,4)")
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
                   help="training steps (the last epoch stops after them); overrides --epochs (default "
                        "20000 when neither is given)")
    p.add_argument("--epochs", type=int_at_least(1), metavar="N", help="epochs, when --iterations is not given")
    p.add_argument("--batch-size", type=int_at_least(1), default=10, metavar="N", help="default 10")
    p.add_argument("--lr", type=positive_float, default=2.5e-4, help="base learning rate (default 2.5e-4; "
                   "x10 for the head)")
    p.add_argument("--weight-decay", type=non_negative_float, default=5e-4, help="default 5e-4")
    p.add_argument("--poly-every", type=int_at_least(1), metavar="N",
                   help="recompute the poly lr every N steps (default 1; deeplab-pytorch: 10)")
    p.add_argument("--crop", type=int_at_least(8), metavar="PX", help="crop side (default 321)")
    p.add_argument("--scale-range", type=_scale_range, metavar="LOW,HIGH",
                   help="random rescale factor, uniform (default 0.5,1.5)")
    p.add_argument("--scale-choices", type=_factors, metavar="S,S,...",
                   help="random rescale factor drawn from these instead (deeplab-pytorch: 0.5,0.75,1,1.25,1.5)")
    p.add_argument("--msc", type=_factors, metavar="S,S,...",
                   help="multi-scale training: also the input scaled by each S and the element-wise max, "
                        "one loss each (deeplab-pytorch: 0.5,0.75; default: single scale)")
    p.add_argument("--loss-at", choices=("image", "logits"),
                   help="image: logits upsampled to the labels (default); logits: labels shrunk to the "
                        "logits, nearest (deeplab-pytorch)")
    p.add_argument("--pad-at", choices=("random", "end"),
                   help="where an image smaller than the crop sits in it: random (default) or top-left, "
                        "padded bottom/right (deeplab-pytorch)")
    p.add_argument("--pad-mean", choices=("imagenet", "caffe"),
                   help="padding colour: the ImageNet mean (default) or deeplab-pytorch's Caffe mean")
    p.add_argument("--masked-self-loss", action="store_true",
                   help="add DRS's DeepLab-V2-PyTorch term: cross-entropy against the argmax of the detached "
                        "logits multiplied by the image's class labels (needs image labels in --voc)")
    p.add_argument("--reference", action="store_true",
                   help=f"deeplab-pytorch's recipe: {' '.join(REFERENCE_FLAGS)} (the option for the default "
                        "resnet101 backbone; give --weights deeplabv1_resnet101-coco.pth); flags given explicitly win")
    p.add_argument("--channels-last", action="store_true",
                   help="train in channels-last memory order (same values; faster depthwise convolutions on "
                        "the CPU, e.g. efficientnet_lite0's: about 1.5x per step on the demo)")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT from its last checkpoint")
    add_device_flags(p)
    p.set_defaults(func=run)


def recipe_from_args(args: argparse.Namespace):
    """(SegRecipe, poly_every, backbone options) of the flags: the default or,
    with --reference, deeplab-pytorch's, then every flag given."""
    from dataclasses import replace

    from ..stages.segment.train import (DEFAULT_RECIPE, REFERENCE_BACKBONE_OPTIONS, REFERENCE_POLY_EVERY,
                                        REFERENCE_RECIPE)

    recipe = REFERENCE_RECIPE if args.reference else DEFAULT_RECIPE
    given = {"crop": args.crop, "msc": args.msc, "loss_at": args.loss_at, "pad_at": args.pad_at,
             "pad_mean": args.pad_mean, "masked_self_loss": args.masked_self_loss or None}
    recipe = replace(recipe, **{k: v for k, v in given.items() if v is not None})
    if args.scale_range is not None and args.scale_choices is not None:
        raise UsageError("give --scale-range or --scale-choices, not both")
    if args.scale_range is not None:
        recipe = replace(recipe, scale=args.scale_range, scale_choices=None)
    if args.scale_choices is not None:
        recipe = replace(recipe, scale=None, scale_choices=args.scale_choices)
    poly_every = args.poly_every or (REFERENCE_POLY_EVERY if args.reference else 1)
    options = dict(args.backbone_option)
    if args.reference and args.init is None and args.backbone in (None, "resnet101") and args.head == "aspp":
        options = {**REFERENCE_BACKBONE_OPTIONS, **options}
    return recipe, poly_every, options


def run(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from ..stages.segment import TRAIN_DEFAULTS, train_segmentation
    from ..stages.segment.train import ITERATIONS

    if args.weight_decay < 0:
        raise UsageError(f"--weight-decay must be >= 0, got {args.weight_decay}")
    recipe, poly_every, options = recipe_from_args(args)
    iterations = args.iterations if args.iterations is not None else (
        None if args.epochs is not None else ITERATIONS)
    cfg = replace(TRAIN_DEFAULTS, epochs=args.epochs or 1, batch_size=args.batch_size, lr=args.lr,
                  weight_decay=args.weight_decay, seed=args.seed, poly_every=poly_every,
                  channels_last=args.channels_last,
                  num_workers=TRAIN_DEFAULTS.num_workers if args.num_workers is None else args.num_workers)
    rates = {"aspp_rates": args.aspp_rates} if args.aspp_rates else {}
    final = train_segmentation(args.voc, args.split, args.labels, args.out, head=args.head, **rates,
                               backbone=args.backbone, backbone_options=options,
                               weights=args.weights, classifier=args.init,
                               cfg=cfg, iterations=iterations, recipe=recipe,
                               resume=args.resume, device=default_device(args.device),
                               progress=not args.no_progress)
    print(f"train-seg: wrote {final}")
