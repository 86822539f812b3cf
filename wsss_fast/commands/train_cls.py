"""``wsss-fast train-cls``: trains the CAM, DRS or SC-CAM classifier with the
reference settings of the method (see wsss_fast.stages.classify.preset);
every setting has a flag."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import (Ordered, add_device_flags, default_device, fraction, int_at_least, key_value,
               non_negative_float, output_dir, positive_float)

# What --reference stands for, per method (the presets of cam and sccam already
# are their code's settings); tests/test_reference_table.py checks both ways.
REFERENCE_FLAGS = {"cam": (), "sccam": (),
                   "drs": ("--squash", "384", "--head-bias", "--head-init", "he", "--bias-decay", "--no-drop-last")}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train-cls", help="train the CAM / DRS / SC-CAM classifier",
        description="Trains a multi-label classifier on image-level labels with the reference settings of "
                    "--method (cam: PSA; drs: DRS; sccam: SC-CAM); flags override them. Writes final.pt, a "
                    "checkpoint per epoch and log.jsonl to --out; --resume continues an interrupted run.")
    p.add_argument("--voc", type=Path, required=True, metavar="DIR", help="VOC-style root")
    p.add_argument("--split", default="train_aug", help="training split name or list file (default train_aug)")
    p.add_argument("--out", type=output_dir, required=True, metavar="DIR", help="output folder")
    p.add_argument("--method", choices=("cam", "drs", "sccam"), default="cam")
    p.add_argument("--preset", choices=("psa", "irn", "drs", "sccam"),
                   help="reference settings of the method: cam takes psa (default: PSA's train_cls) or irn "
                        "(IRN's train_cam: ResNet-50, crop 512, batch 16, 5 epochs, lr 0.1)")
    p.add_argument("--reference", action="store_true",
                   help="every setting of the method's reference code, also where wsss-fast's default differs "
                        f"on purpose (drs: {' '.join(REFERENCE_FLAGS['drs'])}; cam (psa, irn) and sccam: their "
                        "presets already are); flags given explicitly win")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    g = p.add_argument_group("network")
    g.add_argument("--backbone", help="backbone name (default: the preset's: resnet38, vgg16_d1, resnet50)")
    g.add_argument("--weights", metavar="FILE",
                   help="pretrained backbone weights (a .pth file; 'imagenet' for efficientnet_lite0's packaged "
                        "weights); without it the backbone starts from random initialisation")
    g.add_argument("--backbone-option", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="backbone option, repeatable (e.g. drs=delta, delta=0.55, width=32)")
    g.add_argument("--dropout", type=fraction, help="feature dropout before the heads (cam/sccam: 0.5)")
    g.add_argument("--head-bias", action=argparse.BooleanOptionalAction, default=None,
                   help="class head with a bias (DRS's code; default: none, as PSA and SC-CAM)")
    g.add_argument("--head-init", choices=("xavier", "he"),
                   help="class head init: xavier (default, PSA/SC-CAM) or he, N(0, sqrt(2 / classes)) (DRS)")
    g.add_argument("--subcategories", type=int_at_least(0), metavar="K", help="SC-CAM sub-categories per class (10)")
    g.add_argument("--sub-weight", type=non_negative_float, metavar="LAMBDA", help="SC-CAM sub-category loss weight (5)")
    g.add_argument("--rounds", type=int_at_least(0), default=None, metavar="R",
                   help="SC-CAM rounds after round 0 (sccam default 3; 0 trains one classifier)")
    g.add_argument("--init-from", choices=("imagenet", "previous"), default="imagenet",
                   help="SC-CAM: start each round from --weights (reference) or the previous round's model")
    g.add_argument("--round-epochs", type=int_at_least(1), nargs="+", metavar="E",
                   help="SC-CAM: epochs rounds 1, 2, ... train of their --epochs schedule (sccam: 31 41 51 of "
                        "61, the reference's checkpoints ep30/40/50); given --epochs without it, every round "
                        "trains its whole schedule")
    g.add_argument("--round0", metavar="PATH",
                   help="SC-CAM: start the rounds from this classifier instead of training round 0: a wsss-fast "
                        "run folder / final.pt, or PSA's res38_cls.pth (the reference's round 0)")
    g.add_argument("--round0-preset", choices=("cam", "sccam"), default="cam",
                   help="SC-CAM: how round 0 is trained without --round0: cam (default: PSA's train_cls, the "
                        "cam preset on this backbone, as the reference's round 0) or sccam (this command's "
                        "settings, without the sub-category head)")
    g.add_argument("--n-init", type=int_at_least(1), default=10, help="SC-CAM K-means restarts (10)")
    t = p.add_argument_group("optimisation (defaults: the method's reference values)")
    t.add_argument("--epochs", type=int_at_least(1))
    t.add_argument("--batch-size", type=int_at_least(1))
    t.add_argument("--lr", type=positive_float)
    t.add_argument("--weight-decay", type=non_negative_float)
    t.add_argument("--bias-decay", action=argparse.BooleanOptionalAction, default=None,
                   help="weight decay on biases too (DRS's code; default: weights only)")
    t.add_argument("--optimizer", choices=("sgd", "adam"))
    t.add_argument("--momentum", type=non_negative_float)
    t.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    t.add_argument("--schedule", choices=("poly", "step"))
    t.add_argument("--milestones", type=int, nargs="*", metavar="EPOCH")
    t.add_argument("--seed", type=int)
    t.add_argument("--drop-last", action=argparse.BooleanOptionalAction, default=None,
                   help="drop each epoch's last partial batch (default, PSA/SC-CAM); --no-drop-last trains on "
                        "it (DRS's DataLoader)")
    t.add_argument("--crop", type=int_at_least(1), help="random square crop side (px)")
    t.add_argument("--resize-long", type=int_at_least(1), nargs=2, action=Ordered, metavar=("MIN", "MAX"),
                   help="random long-side resize range (px)")
    t.add_argument("--resize-short", type=int_at_least(1), metavar="S", help="set the short side to S (px)")
    t.add_argument("--squash", type=int_at_least(1), metavar="S",
                   help="resize to S x S, the aspect ratio not kept (DRS's code: 384)")
    t.add_argument("--no-jitter", action="store_true", help="no colour jitter")
    add_device_flags(p)
    p.set_defaults(func=run)


def preset_from_args(args: argparse.Namespace):
    from ..stages.classify import override, preset, reference

    p = (reference if args.reference else preset)(args.method, args.preset)
    options = dict(args.backbone_option)
    if args.backbone is not None and args.backbone != p.backbone:
        p.backbone_options = {}
    p.backbone_options = {**p.backbone_options, **options}
    changes = {
        "backbone": args.backbone, "dropout": args.dropout, "subcategories": args.subcategories,
        "sub_weight": args.sub_weight, "head_bias": args.head_bias, "head_init": args.head_init,
        "round_epochs": tuple(args.round_epochs) if args.round_epochs else None,
        "train.bias_decay": args.bias_decay, "train.drop_last": args.drop_last,
        "train.epochs": args.epochs, "train.batch_size": args.batch_size,
        "train.lr": args.lr, "train.weight_decay": args.weight_decay, "train.optimizer": args.optimizer,
        "train.momentum": args.momentum, "train.nesterov": args.nesterov, "train.schedule": args.schedule,
        "train.milestones": tuple(args.milestones) if args.milestones is not None else None,
        "train.seed": args.seed, "train.num_workers": args.num_workers, "augment.crop": args.crop,
        "augment.resize_long": tuple(args.resize_long) if args.resize_long else None,
        "augment.resize_short": args.resize_short, "augment.squash": args.squash,
    }
    if args.epochs is not None and args.round_epochs is None:
        p.round_epochs = ()  # a schedule of the user's: every round trains all of it
    p = override(p, **changes)
    if args.no_jitter:
        p.augment["jitter"] = None
    return p


def run(args: argparse.Namespace) -> None:
    from ..stages.classify import train_classifier
    from ..data.dataset import VOCSegmentation
    from ..errors import UsageError

    p = preset_from_args(args)
    rounds = args.rounds if args.rounds is not None else (3 if args.method == "sccam" else 0)
    if rounds and args.method != "sccam":
        raise UsageError(f"--rounds is for --method sccam, not {args.method}")
    dataset = VOCSegmentation(args.voc, args.split)
    final = train_classifier(args.method, p, dataset, args.out, weights=args.weights, rounds=rounds,
                             init_from=args.init_from, n_init=args.n_init, round0=args.round0,
                             round0_settings=args.round0_preset, resume=args.resume,
                             device=default_device(args.device), progress=not args.no_progress)
    print(f"train-cls: wrote {final}")
