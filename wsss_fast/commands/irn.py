"""``wsss-fast make-ir-labels`` and ``train-irn``: IRN's inter-pixel relation
labels from CAMs and the training of its boundary network (IRN's
cam_to_ir_label and train_irn; its walk is ``wsss-fast rw --method irn``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import (Ordered, add_backbone_flags, add_crf_stage_flags, add_device_flags, add_sgd_flags, add_split_flags,
               default_device, int_at_least, non_negative_float, output_dir, positive_float)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "make-ir-labels", help="IRN's inter-pixel relation labels: confident fg/bg from CAMs + dense CRF",
        description="For each image, IRN's cam_to_ir_label: argmax over [fg threshold, CAMs] and over "
                    "[bg threshold, CAMs], each refined by a dense CRF on the hard labels (IRN's "
                    "crf_inference_label); label = the fg result, 255 where it is background, 0 where "
                    "both are. Writes OUT/<name>.png (uint8, 0 bg, 1..C, 255 unsure). Resumes (skips "
                    "existing files); shards over torchrun ranks; CRFs run on --crf-backend.")
    add_split_flags(p)
    p.add_argument("--cam", type=Path, required=True, metavar="DIR", help="CAM files <name>.npz")
    p.add_argument("--out", type=output_dir, required=True, metavar="DIR", help="output folder")
    p.add_argument("--fg-threshold", type=positive_float, default=0.30, metavar="T",
                   help="confident-foreground CAM threshold (default 0.30, IRN's conf_fg_thres)")
    p.add_argument("--bg-threshold", type=non_negative_float, default=0.05, metavar="T",
                   help="confident-background CAM threshold (default 0.05, IRN's conf_bg_thres)")
    p.add_argument("--crf", choices=("irn", "psa", "deeplab"), default="irn", help="CRF preset (default irn)")
    add_crf_stage_flags(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_make_labels)

    p = subparsers.add_parser(
        "train-irn", help="train IRN's boundary network on the labels of make-ir-labels",
        description="IRN's train_irn (class-boundary branch only; the displacement branch is for "
                    "instance segmentation, which wsss-fast does not offer): frozen backbone, pairs of "
                    "radius 10 at stride 4, defaults batch 32, 3 epochs, SGD lr 0.1 poly 0.9, weight decay "
                    "1e-4 on every parameter, momentum 1e-4 (IRN's optimiser quirk), random rescale 0.5-1.5, "
                    "flip, crop 512. The backbone is built by name with pretrained weights (--backbone "
                    "resnet50 --weights FILE: IRN's ImageNet ResNet-50) or taken from a train-cls model "
                    "(--init). Writes final.pt, checkpoints and log.jsonl to --out.")
    add_split_flags(p)
    p.add_argument("--labels", type=Path, required=True, metavar="DIR", help="output of make-ir-labels")
    p.add_argument("--out", type=output_dir, required=True, metavar="DIR", help="output folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    g = p.add_argument_group("network")
    add_backbone_flags(g, backbone_help="backbone name (IRN: resnet50; without --init)",
                       weights_help="backbone weights file (IRN: torchvision's ImageNet ResNet-50); with --init "
                                    "it replaces the classifier's weights")
    g.add_argument("--radius", type=int_at_least(2), default=10,
                   help="pair radius on the stride-4 grid (default 10, IRN's train_irn)")
    g.add_argument("--border", choices=("all", "psa"), default="psa",
                   help="labelled pairs: 'psa' (default; IRN's path index drops the sources within radius - 1 "
                        "of the left, right and bottom borders, as PSA's) or 'all' (every pair inside the crop)")
    t = p.add_argument_group("optimisation")
    add_sgd_flags(t, epochs=3, batch_size=32, lr=0.1, weight_decay=1e-4, momentum=1e-4, reference="IRN")
    t.add_argument("--crop", type=int_at_least(8), default=512, help="random square crop side (px)")
    t.add_argument("--scale", type=positive_float, nargs=2, action=Ordered, default=(0.5, 1.5),
                   metavar=("MIN", "MAX"), help="random rescale range (default 0.5 1.5)")
    t.add_argument("--jitter", action="store_true", help="colour jitter (0.3, 0.3, 0.3, 0.1); IRN has none")
    add_device_flags(p)
    p.set_defaults(func=run_train)


def run_make_labels(args: argparse.Namespace) -> None:
    from ..data.voc import VOCRoot
    from ..stages.ir_labels import make_ir_labels

    voc = VOCRoot(args.voc)
    summary = make_ir_labels(voc, voc.split(args.split), args.cam, args.out,
                             thresholds=(args.fg_threshold, args.bg_threshold), crf=args.crf,
                             workers=args.workers, crf_backend=args.crf_backend, device=args.device,
                             progress=not args.no_progress)
    print(f"make-ir-labels: {summary['written']} written, {summary['skipped']} already done, "
          f"in {summary['seconds']:.1f} s -> {args.out}")


def run_train(args: argparse.Namespace) -> None:
    from ..data.voc import VOCRoot
    from ..models.initial import BackboneInit
    from ..stages.irn import IRNAugmentSettings, irn_train_config, train_irn

    init = BackboneInit(name=args.backbone, options=dict(args.backbone_option), weights=args.weights,
                        classifier=args.init)
    cfg = irn_train_config(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                           weight_decay=args.weight_decay, momentum=args.momentum, seed=args.seed,
                           num_workers=2 if args.num_workers is None else args.num_workers)
    augment = IRNAugmentSettings(crop=args.crop, scale=tuple(args.scale),
                                 jitter=(0.3, 0.3, 0.3, 0.1) if args.jitter else None)
    final = train_irn(VOCRoot(args.voc), args.split, args.labels, args.out, init, cfg=cfg, augment=augment,
                      radius=args.radius, border=args.border, resume=args.resume, device=default_device(args.device),
                      progress=not args.no_progress)
    print(f"train-irn: wrote {final}")
