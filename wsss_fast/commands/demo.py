"""``wsss-fast demo``: builds the bundled dataset and runs the whole
pipeline on it (configs/demo.yaml) on the CPU."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import int_at_least, output_dir


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="the whole pipeline on the bundled demo dataset (CPU, about 10 minutes on 2 cores)",
        description="Writes the bundled demo dataset (Fashion-MNIST items on real photographs, 10 "
                    "classes) to OUT/data, then runs configs/demo.yaml on it: classifier, CAMs, "
                    "AffinityNet and random walk, CRF, segmentation network, with the mIoU of each "
                    "stage. Prints the table and writes OUT/summary.json and OUT/report/index.html. "
                    "Running it again resumes.")
    p.add_argument("--out", type=output_dir, default=Path("demo-run"), help="output folder (default ./demo-run)")
    p.add_argument("--n-train", type=int_at_least(8), default=2000, metavar="N", help="train images (default 2000)")
    p.add_argument("--n-val", type=int_at_least(4), default=300, metavar="N", help="val images (default 300)")
    p.add_argument("--size", type=int_at_least(32, at_most=1024), default=128, metavar="S",
                   help="image side, 32..1024 (default 128)")
    p.add_argument("--device", help="torch device (default cpu)")
    p.add_argument("--force", action="append", default=[], metavar="STAGE",
                   help="recompute STAGE and every stage after it; repeatable")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="overrides of configs/demo.yaml (e.g. stages.train-cls.epochs=1)")
    p.set_defaults(func=run, trailing_positionals="overrides")


def run(args: argparse.Namespace) -> None:
    from ..config import CONFIG_DIR, load_config
    from ..data.demo import make_demo_data
    from ..pipeline import run_pipeline

    data = args.out / "data"
    make_demo_data(data, n_train=args.n_train, n_val=args.n_val, size=args.size, progress=True)
    config = load_config(CONFIG_DIR / "demo.yaml", args.overrides)
    config.update(voc=str(data), out=str(args.out), device=args.device or config.get("device") or "cpu")
    summary = run_pipeline(config, force=args.force)
    if summary is not None:  # rank 0
        print(f"demo: {summary['total_seconds']:.0f} s in all; {args.out / 'summary.json'}, "
              f"{args.out / 'report' / 'index.html'}")
