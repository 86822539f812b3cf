"""``wsss-fast make-demo-data DIR``: writes the bundled demo dataset in the VOC layout."""
from __future__ import annotations

import argparse

from ..errors import UsageError
from . import int_at_least, output_dir


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "make-demo-data", help="write the demo dataset (real photos + Fashion-MNIST items, VOC layout)",
        description="Writes scenes of 1-3 Fashion-MNIST items on crops of real photographs, with exact "
                    "masks, in the VOC layout (JPEGImages, SegmentationClass, ImageSets/Segmentation, "
                    "cls_labels.npz, class_names.txt). Deterministic from --seed; an interrupted run "
                    "resumes where it stopped.")
    p.add_argument("dir", type=output_dir, metavar="DIR", help="output VOC root")
    p.add_argument("--n-train", type=int_at_least(0), default=2000, metavar="N", help="train images (default 2000)")
    p.add_argument("--n-val", type=int_at_least(0), default=300, metavar="N", help="val images (default 300)")
    p.add_argument("--size", type=int_at_least(32, at_most=1024), default=128, metavar="S",
                   help="image side in pixels, 32..1024 (default 128)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..data.demo import make_demo_data

    if args.n_train + args.n_val == 0:
        raise UsageError("--n-train and --n-val are both 0: nothing to write")
    summary = make_demo_data(args.dir, n_train=args.n_train, n_val=args.n_val, size=args.size,
                             seed=args.seed, progress=not args.no_progress)
    print(f"demo dataset in {summary['root']}: {summary['num_images']['train']} train, "
          f"{summary['num_images']['val']} val images of {args.size} px "
          f"({summary['written']} written) in {summary['seconds']:.1f} s")
