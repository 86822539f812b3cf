"""``wsss-fast report``: overlays of images, CAMs, label maps and ground truth,
indexed by a static HTML page."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import int_at_least, output_dir


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="HTML page of image / CAM / label / ground-truth overlays",
        description="Writes OUT/index.html and OUT/panels/*.png (opens in a browser without a server).")
    p.add_argument("--voc", type=Path, required=True, metavar="ROOT", help="VOC-style root (images, masks)")
    p.add_argument("--split", default="val", help="split name or list file (default val)")
    p.add_argument("--cam", type=Path, metavar="DIR", help="CAM files <name>.npz")
    p.add_argument("--pred", type=Path, metavar="DIR", help="label-map PNGs <name>.png")
    p.add_argument("--eval-json", type=Path, metavar="FILE",
                   help="JSON of `wsss-fast eval`/`eval-cam`: its mIoU heads the page, its plots are shown")
    p.add_argument("--out", type=output_dir, required=True, metavar="DIR", help="report folder")
    p.add_argument("--limit", type=int_at_least(1), default=50, metavar="N",
                   help="first N images of the split (default 50)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from ..data.voc import VOCRoot
    from ..report import ReportItem, write_report
    from ..storage import load_label_png, load_scores

    voc = VOCRoot(args.voc)
    names = voc.split(args.split)[:args.limit]
    has_masks = bool(voc.mask_dirs)

    def items():
        for name in names:
            yield ReportItem(
                name=name, image=voc.load_image(name),
                cam=load_scores(args.cam / f"{name}.npz") if args.cam else None,
                label=load_label_png(args.pred / f"{name}.png") if args.pred else None,
                gt=voc.load_mask(name) if has_masks else None)

    summary, figures = {"root": str(voc.root), "split": str(args.split)}, []
    if args.eval_json:
        results = json.loads(args.eval_json.read_text())
        summary["mIoU"] = f"{100 * results['miou']:.2f}%"
        if "threshold" in results:
            summary["threshold"] = results["threshold"]
        figures = sorted(args.eval_json.parent.glob(f"{args.eval_json.stem}_*.png"))
    index = write_report(args.out, items(), voc.class_names, summary=summary, figures=figures)
    print(f"wrote {index} ({len(names)} images)")
