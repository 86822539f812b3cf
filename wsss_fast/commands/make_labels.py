"""``wsss-fast make-labels``: pseudo segmentation labels (palette PNGs) from
CAM files, by a background threshold or, as DRS, with saliency maps."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import int_at_least, output_dir


def add_parser(subparsers) -> None:
    from ..stages.labels import ALPHA, CONFIDENT, SALIENCY_THRESHOLD, THRESHOLD

    p = subparsers.add_parser(
        "make-labels", help="pseudo labels (PNG) from CAMs: background threshold or DRS saliency rule",
        description="Without --saliency: label = argmax over [threshold, CAMs]. With --saliency (DRS): "
                    "maps below --alpha are dropped, the saliency map is binarised at "
                    "> --saliency-threshold, background score = 1 - salient, argmax; pixels with "
                    "more than two scores above --confident and salient pixels labelled background "
                    "become 255. Existing PNGs are kept (resume); under torchrun the rest is split "
                    "over the ranks.")
    p.add_argument("--cam", type=Path, required=True, metavar="DIR", help="CAM files <name>.npz (make-cam)")
    p.add_argument("--out", type=output_dir, required=True, metavar="DIR", help="output folder of <name>.png")
    p.add_argument("--names", type=Path, metavar="FILE",
                   help="split list of the images to label (default: every .npz of --cam)")
    p.add_argument("--threshold", type=float, default=THRESHOLD, metavar="T",
                   help=f"background score without saliency (default {THRESHOLD} as SC-CAM and IRN; "
                        "PSA uses 0.2; see eval-cam's sweep)")
    p.add_argument("--saliency", type=Path, metavar="DIR",
                   help="saliency maps <name>.png (grey 0-255) for DRS's rule")
    p.add_argument("--alpha", type=float, default=ALPHA, help=f"DRS object cue (default {ALPHA})")
    p.add_argument("--saliency-threshold", type=float, default=SALIENCY_THRESHOLD, metavar="V",
                   help=f"salient where the map is > V of 255 (default {SALIENCY_THRESHOLD}, DRS code)")
    p.add_argument("--confident", type=float, default=CONFIDENT, metavar="C",
                   help=f"DRS conflict rule: score counted as confident above C (default {CONFIDENT})")
    p.add_argument("--workers", type=int_at_least(1), default=2, metavar="N", help="threads (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..data.voc import parse_split_list
    from ..stages.labels import make_labels

    names = parse_split_list(args.names) if args.names else None
    summary = make_labels(args.cam, args.out, names=names, threshold=args.threshold,
                          saliency_dir=args.saliency, alpha=args.alpha,
                          saliency_threshold=args.saliency_threshold, confident=args.confident,
                          workers=args.workers, progress=not args.no_progress)
    rule = f"saliency {args.saliency}" if args.saliency else f"threshold {args.threshold:g}"
    print(f"make-labels: {len(summary['written'])} labels in {summary['seconds']:.1f} s "
          f"({rule}), {summary['skipped']} already done")
