"""``wsss-fast train-refine``: DRS refinement learning (see wsss_fast.stages.refine)."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import add_device_flag, default_device, int_at_least, output_dir, positive_float

REFERENCE_FLAGS = ("--schedule", "code", "--new-layer-std", "0.01", "--no-drop-last")  # what --reference stands for


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train-refine", help="DRS refinement learning: regress the DRS classifier's maps (MSE)",
        description="Trains a plain network (the classifier's backbone without DRS, a new 1x1 head) "
                    "to regress the DRS classifier's localisation maps, max-masked per pixel. "
                    "Adam, lr 1e-4, batch 10, inputs squashed to --size, flip and colour jitter. "
                    "Writes OUT/checkpoint.pt every epoch, OUT/log.jsonl and OUT/final.pt (use it "
                    "with make-cam).")
    p.add_argument("--classifier", type=Path, required=True, metavar="PATH",
                   help="the DRS classifier's final.pt (or its folder)")
    p.add_argument("--cams", type=Path, required=True, metavar="DIR",
                   help="its CAMs of --split (make-cam with the drs preset)")
    p.add_argument("--voc", type=Path, required=True, metavar="ROOT", help="VOC-style dataset root")
    p.add_argument("--split", default="train_aug", help="split name or list file (default train_aug)")
    p.add_argument("--out", type=output_dir, required=True, metavar="DIR", help="output folder")
    p.add_argument("--init", choices=("imagenet", "classifier"), default="imagenet",
                   help="backbone initialisation: ImageNet weights from --weights (default, as the "
                        "reference) or the classifier's backbone")
    p.add_argument("--weights", metavar="FILE",
                   help="ImageNet weights for --init imagenet (a .pth file; 'imagenet' for efficientnet_lite0's "
                        "packaged weights)")
    p.add_argument("--schedule", choices=("paper", "code"),
                   help="paper: 15 epochs, lr x0.1 from epochs 5 and 10 (default); code: 30 epochs, "
                        "from 10 and 20 (DRS's run.sh)")
    p.add_argument("--new-layer-std", type=positive_float, metavar="STD",
                   help="with --init imagenet: draw the new convolutions (VGG-16 D1's extra ones) from "
                        "N(0, STD^2) (DRS's code: 0.01; default: their He initialisation)")
    p.add_argument("--drop-last", action=argparse.BooleanOptionalAction, default=None,
                   help="drop each epoch's last partial batch (default); --no-drop-last trains on it (DRS)")
    p.add_argument("--reference", action="store_true",
                   help=f"DRS's code: {' '.join(REFERENCE_FLAGS)} (the std with --init imagenet only; flags "
                        "given explicitly win)")
    p.add_argument("--epochs", type=int_at_least(1), metavar="N", help="override the schedule's epochs")
    p.add_argument("--decay-at", type=int_at_least(1), nargs="+", metavar="E",
                   help="override the schedule's decay epochs (1-based: lr x0.1 from epoch E on)")
    p.add_argument("--lr", type=positive_float, default=1e-4, help="Adam learning rate (default 1e-4)")
    p.add_argument("--batch-size", type=int_at_least(1), default=10, metavar="N",
                   help="default 10 (DRS's run.sh: 5 per GPU on 2 GPUs)")
    p.add_argument("--size", type=int_at_least(8, at_most=2048), default=320, metavar="S",
                   help="input side: images and maps squashed to S x S (default 320)")
    p.add_argument("--workers", type=int_at_least(0), default=2, metavar="N",
                   help="data loading processes (default 2)")
    add_device_flag(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the order and augmentations (default 0)")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> dict:
    """epochs, decay_at, new_layer_std and drop_last of the flags: the
    defaults or, with --reference, DRS's code, then every flag given."""
    from ..stages.refine import REFERENCE, SCHEDULES

    reference = REFERENCE if args.reference else {}
    epochs, decay_at = SCHEDULES[args.schedule or reference.get("schedule", "paper")]
    new_layer_std = args.new_layer_std
    if new_layer_std is None and args.init == "imagenet":
        new_layer_std = reference.get("new_layer_std")
    return {"epochs": args.epochs or epochs, "decay_at": tuple(args.decay_at or decay_at),
            "new_layer_std": new_layer_std,
            "drop_last": args.drop_last if args.drop_last is not None else reference.get("drop_last", True)}


def run(args: argparse.Namespace) -> None:
    from ..stages.refine import train_refine

    final = train_refine(args.classifier, args.voc, args.split, args.cams, args.out, init=args.init,
                         weights=args.weights, **settings_from_args(args),
                         lr=args.lr, batch_size=args.batch_size, size=args.size, num_workers=args.workers,
                         device=default_device(args.device), seed=args.seed, amp=not args.no_amp,
                         resume=args.resume, progress=not args.no_progress)
    print(f"train-refine: wrote {final}")
