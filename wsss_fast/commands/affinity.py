"""``wsss-fast make-aff-labels``, ``train-aff`` and ``rw``: AffinityNet's
labels from CAMs, its training, and the random walk (PSA's infer_cls CRF
step, train_aff and infer_aff; ``rw --method irn`` is IRN's walk on the
boundary network of ``train-irn``, :mod:`wsss_fast.commands.irn`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import (add_backbone_flags, add_crf_backend_flag, add_crf_stage_flags, add_device_flags,
               add_precision_flag, add_sgd_flags, add_split_flags, default_device, int_at_least,
               non_negative_float, output_dir, positive_float)

BORDER_HELP = ("pairs near the border: 'all' (every pair inside the map) or 'psa' (drop those "
               "PSA's index construction drops)")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "make-aff-labels", help="AffinityNet's labels: low/high-alpha dense CRFs of the CAMs",
        description="For each image, a dense CRF of [(1 - max CAM)^alpha, CAMs] with a low and a high "
                    "alpha (PSA); writes the marginals to OUT/la and OUT/ha (score .npz at image "
                    "resolution, keys [0, classes]). Resumes (skips images whose two files exist); "
                    "shards over torchrun ranks; CRFs run on --crf-backend.")
    add_split_flags(p)
    p.add_argument("--cam", type=Path, required=True, metavar="DIR", help="CAM files <name>.npz")
    p.add_argument("--out", type=output_dir, required=True, metavar="DIR", help="output folder")
    p.add_argument("--low-alpha", type=positive_float, default=4.0, metavar="A",
                   help="background exponent of the confident-foreground CRF (default 4)")
    p.add_argument("--high-alpha", type=positive_float, default=32.0, metavar="A",
                   help="background exponent of the confident-background CRF (default 32; paper 24)")
    p.add_argument("--crf", choices=("psa", "deeplab"), default="psa", help="CRF preset (default psa)")
    add_crf_stage_flags(p)
    p.add_argument("--encoding", choices=("uint8", "float16"), default="uint8",
                   help="score-file encoding (default uint8)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_make_labels)

    p = subparsers.add_parser(
        "train-aff", help="train AffinityNet on the labels of make-aff-labels",
        description="PSA's train_aff: defaults batch 8, 8 epochs, SGD lr 0.1 poly 0.9, wd 5e-4, "
                    "momentum 5e-4 (PSA's optimiser quirk), crop 448, flip, colour jitter, no "
                    "rescaling. The backbone comes from a train-cls model (--init) or is built by "
                    "name with optional pretrained weights (--backbone, --weights: PSA starts from "
                    "ImageNet weights). Writes final.pt, checkpoints and log.jsonl to --out.")
    add_split_flags(p)
    p.add_argument("--labels", type=Path, required=True, metavar="DIR", help="output of make-aff-labels")
    p.add_argument("--out", type=output_dir, required=True, metavar="DIR", help="output folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    g = p.add_argument_group("network")
    add_backbone_flags(g, backbone_help="backbone name (without --init; with it, must be the classifier's)",
                       weights_help="backbone weights file (PSA: ImageNet); with --init it replaces the "
                                    "classifier's weights")
    g.add_argument("--head-norm", choices=("gn", "none"), default=None,
                   help="GroupNorm after the head's projections (PSA's VGG-16 head) or none (PSA's ResNet-38 "
                        "head); default: none for resnet38, gn otherwise")
    g.add_argument("--radius", type=int_at_least(2), default=5, help="pair radius on the grid (default 5)")
    g.add_argument("--border", choices=("all", "psa"), default="all", help=BORDER_HELP)
    t = p.add_argument_group("optimisation")
    add_sgd_flags(t, epochs=8, batch_size=8, lr=0.1, weight_decay=5e-4, momentum=5e-4, reference="PSA")
    t.add_argument("--crop", type=int_at_least(8), default=448, help="random square crop side (px)")
    t.add_argument("--resize-long", type=int_at_least(1), nargs=2, metavar=("MIN", "MAX"),
                   help="random long-side resize range (px; PSA's train_aff: none)")
    t.add_argument("--no-jitter", action="store_true", help="no colour jitter")
    add_device_flags(p)
    p.set_defaults(func=run_train)

    p = subparsers.add_parser(
        "rw", help="random walk of the CAMs (PSA's AffinityNet or IRN's boundaries) -> label maps",
        description="--method psa (PSA's infer_aff, --model from train-aff): background (1 - max CAM)^alpha, "
                    "maps pooled to the stride-8 grid, sparse random walk (beta 8, 256 steps), upsampled, "
                    "argmax. --method irn (IRN's make_sem_seg_labels, --model from train-irn): CAMs at "
                    "stride 4 times (1 - boundary), sparse walk on the boundary affinities (radius 5, beta "
                    "10, 256 steps), upsampled, divided by the maximum, argmax over [0.25, maps]. Writes "
                    "OUT/<name>.png (evaluable with wsss-fast eval). Resumes; shards over torchrun ranks.")
    add_split_flags(p)
    p.add_argument("--method", choices=("psa", "irn"), default="psa",
                   help="PSA's walk on AffinityNet (default) or IRN's on its boundary map")
    p.add_argument("--model", type=Path, required=True, metavar="PATH",
                   help="train-aff (psa) or train-irn (irn) final.pt or its folder")
    p.add_argument("--cam", type=Path, required=True, metavar="DIR", help="CAM files <name>.npz")
    p.add_argument("--out", type=output_dir, required=True, metavar="DIR", help="label-map folder")
    p.add_argument("--scores", type=output_dir, metavar="DIR", help="also write the propagated maps <name>.npz here")
    p.add_argument("--beta", type=positive_float, help="affinity exponent (default: psa 8, irn 10)")
    p.add_argument("--steps", type=_steps, metavar="N|auto",
                   help="walk steps, 0..65536 (default 256 = 2^8), or auto: 256 x the image's area / "
                        "(500 x 375), the same reach relative to the image as 256 steps on a VOC image "
                        "(22 at 128 x 128)")
    p.add_argument("--border", choices=("all", "psa"), default="all",
                   help=BORDER_HELP + " (default all, also IRN's)")
    g = p.add_argument_group("psa only")
    g.add_argument("--alpha", type=_alpha, metavar="A|auto",
                   help="background exponent (default 16, PSA's, for ResNet-38's CAMs), or auto: the exponent "
                        "that puts the background at the Otsu threshold of the largest CAM value over the "
                        "split's pixels (no ground truth; printed)")
    g = p.add_argument_group("irn only")
    g.add_argument("--radius", type=int_at_least(1), help="pair radius of the walk at stride 4 (default 5)")
    g.add_argument("--threshold", type=_threshold, metavar="T|auto",
                   help="background score after dividing by the maximum (default 0.25, IRN's, for ResNet-50's "
                        "CAMs), or auto: the Otsu threshold of the largest CAM value over the split's pixels "
                        "(no ground truth; printed)")
    g.add_argument("--pad-to", type=int_at_least(0), metavar="PX",
                   help="pad images to at least PX x PX for the boundary network (default: its training crop)")
    p.add_argument("--crf", choices=("psa", "deeplab"), help="dense CRF on the propagated maps (preset)")
    add_crf_backend_flag(p)
    p.add_argument("--crf-workers", type=int_at_least(1), metavar="N",
                   help="processes of the pydensecrf CRF backend (default: every core)")
    p.add_argument("--batch-size", type=int_at_least(1), default=8, help="same-size images per batch (default 8)")
    add_device_flags(p)
    add_precision_flag(p)
    p.set_defaults(func=run_rw)


def _steps(text: str) -> int | str:
    return text if text == "auto" else int_at_least(0, at_most=65536)(text)


def _alpha(text: str) -> float | str:
    return text if text == "auto" else positive_float(text)


def _threshold(text: str) -> float | str:
    return text if text == "auto" else non_negative_float(text)


def run_make_labels(args: argparse.Namespace) -> None:
    from ..stages.affinity_labels import make_affinity_labels
    from ..data.voc import VOCRoot

    voc = VOCRoot(args.voc)
    summary = make_affinity_labels(voc, voc.split(args.split), args.cam, args.out,
                                   alphas=(args.low_alpha, args.high_alpha), crf=args.crf,
                                   workers=args.workers, encoding=args.encoding,
                                   crf_backend=args.crf_backend, device=args.device,
                                   progress=not args.no_progress)
    print(f"make-aff-labels: {summary['written']} written, {summary['skipped']} already done, "
          f"in {summary['seconds']:.1f} s -> {args.out}")


def run_train(args: argparse.Namespace) -> None:
    from ..stages.affinity import AugmentSettings, psa_train_config, train_affinity
    from ..models.initial import BackboneInit
    from ..data.dataset import VOCSegmentation

    init = BackboneInit(name=args.backbone, options=dict(args.backbone_option), weights=args.weights,
                        classifier=args.init)
    cfg = psa_train_config(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                           weight_decay=args.weight_decay, momentum=args.momentum, seed=args.seed,
                           num_workers=2 if args.num_workers is None else args.num_workers)
    augment = AugmentSettings(crop=args.crop, resize_long=tuple(args.resize_long) if args.resize_long else None,
                              jitter=None if args.no_jitter else AugmentSettings.jitter)
    images = VOCSegmentation(args.voc, args.split, labels=False)
    final = train_affinity(images, args.labels, args.out, init, cfg=cfg, augment=augment,
                           radius=args.radius, head_norm=args.head_norm, border=args.border,
                           resume=args.resume, device=default_device(args.device),
                           progress=not args.no_progress)
    print(f"train-aff: wrote {final}")


def run_rw(args: argparse.Namespace) -> None:
    import torch

    from ..cpu import resolve_precision
    from ..data.voc import VOCRoot
    from ..models.checkpoints import load_affinity_net, load_boundary_net
    from ..stages.random_walk import alpha_for_threshold, otsu_cam_threshold, run_random_walk, walk_settings

    voc = VOCRoot(args.voc)
    names = voc.split(args.split)
    pad_to = args.pad_to
    if args.method == "irn":
        model, meta = load_boundary_net(args.model)
        pad_to = meta.get("crop", 0) if pad_to is None else pad_to
    else:
        model = load_affinity_net(args.model)
    settings = walk_settings(args.method, alpha=args.alpha, beta=args.beta, n_steps=args.steps,
                             border=args.border, radius=args.radius, threshold=args.threshold, pad_to=pad_to)
    if "auto" in (args.alpha, args.threshold):  # walk_settings has refused the other method's one
        from ..storage import require_score_files

        require_score_files(args.cam, names)
        threshold = otsu_cam_threshold(args.cam, names, progress=not args.no_progress)
        if args.alpha == "auto":
            settings.alpha = alpha_for_threshold(threshold)
            print(f"rw: background exponent alpha {settings.alpha:.3f}: the CAMs' Otsu threshold {threshold:.3f}")
        else:
            settings.threshold = threshold
            print(f"rw: background threshold {threshold:.3f}: the CAMs' Otsu threshold")
    device = default_device(args.device)
    summary = run_random_walk(model, voc, names, args.cam, args.out, settings, scores_dir=args.scores,
                              crf=args.crf, crf_workers=args.crf_workers, crf_backend=args.crf_backend,
                              batch_size=args.batch_size, device=device,
                              num_workers=2 if args.num_workers is None else args.num_workers,
                              precision=resolve_precision(args.cpu_precision, torch.device(device).type),
                              progress=not args.no_progress, inputs={"model": args.model})
    print(f"rw: {summary['written']} images in {summary['seconds']:.1f} s "
          f"({summary['images_per_second']:.2f} images/s), {summary['skipped']} already done -> {args.out}")
