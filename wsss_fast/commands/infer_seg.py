"""``wsss-fast infer-seg``: label PNGs from a trained DeepLab, then mIoU."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError
from . import add_crf_backend_flag, add_device_flags, add_precision_flag, default_device, int_at_least, output_dir

REFERENCE_FLAGS = ("--msc", "0.5,0.75")  # what --reference stands for (deeplab-pytorch's MSC test)


def _scales(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"scales must be positive, got {text!r}")
    return values


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "infer-seg", help="segment a split with a trained DeepLab (optional CRF), then evaluate",
        description="Writes OUT/<name>.png (class indices at image resolution) for every image of the "
                    "split, skipping those already written; shards the rest over torchrun ranks. Then, "
                    "in a single process, prints the mIoU table against the ground truth.")
    p.add_argument("--model", type=Path, required=True, metavar="PATH", help="train-seg run folder or final.pt")
    p.add_argument("--voc", type=Path, required=True, metavar="ROOT", help="VOC-style root (images)")
    p.add_argument("--split", default="val", help="split name or list file (default val)")
    p.add_argument("--out", type=output_dir, required=True, metavar="DIR", help="label PNG folder")
    p.add_argument("--scales", type=_scales, default=(1.0,), metavar="S[,S...]",
                   help="input scales, logits averaged (default 1.0, as the reference test; multi-scale: "
                        "0.5,0.75,1,1.25,1.5 with --flip)")
    p.add_argument("--flip", action="store_true", help="also run mirrored images")
    p.add_argument("--msc", type=_scales, default=(), metavar="S[,S...]",
                   help="deeplab-pytorch's MSC at test: each pass's logits are the element-wise max over the "
                        "input and its copies scaled by S (reference: 0.5,0.75; default: none)")
    p.add_argument("--reference", action="store_true",
                   help=f"deeplab-pytorch's test: {' '.join(REFERENCE_FLAGS)} at scale 1, no flip (an explicit --msc "
                        "wins)")
    p.add_argument("--crf", action="store_true", help="dense CRF with DeepLab's settings on the probabilities")
    add_crf_backend_flag(p)
    p.add_argument("--crf-workers", type=int_at_least(1), metavar="N",
                   help="processes of the pydensecrf CRF backend (default: every core)")
    p.add_argument("--batch-size", type=int_at_least(1), default=8, metavar="N",
                   help="images of one size per batch (default 8)")
    p.add_argument("--gt", type=Path, metavar="DIR",
                   help="ground-truth PNGs (default: ROOT/SegmentationClass when it has every image)")
    p.add_argument("--no-eval", action="store_true", help="only write the label maps")
    add_device_flags(p)
    add_precision_flag(p)
    p.set_defaults(func=run)


def msc_from_args(args: argparse.Namespace) -> tuple[float, ...]:
    """The MSC factors of the flags (--msc, else deeplab-pytorch's with --reference)."""
    from ..stages.segment.train import REFERENCE_RECIPE

    if args.reference and (args.scales != (1.0,) or args.flip):
        raise UsageError("--reference tests at scale 1 without flip, as deeplab-pytorch; leave out --scales/--flip")
    return tuple(args.msc) or (REFERENCE_RECIPE.msc if args.reference else ())


def run(args: argparse.Namespace) -> None:
    import torch

    from ..cpu import resolve_precision
    from ..data.voc import VOCRoot
    from ..distributed import world_size
    from ..eval import evaluate_label_dirs, format_table
    from ..models.checkpoints import load_deeplab
    from ..stages.segment import segment_split

    voc = VOCRoot(args.voc)
    model, meta = load_deeplab(args.model)
    if tuple(meta["class_names"]) != voc.class_names:
        raise UsageError(f"the model was trained on classes {', '.join(meta['class_names'])} but {voc.root} "
                         f"has {', '.join(voc.class_names)}")
    msc = msc_from_args(args)
    device = default_device(args.device)
    summary = segment_split(model, voc, args.split, args.out, scales=args.scales, flip=args.flip, msc=msc,
                            crf=args.crf, batch_size=args.batch_size, device=device,
                            num_workers=2 if args.num_workers is None else args.num_workers,
                            crf_workers=args.crf_workers, crf_backend=args.crf_backend,
                            precision=resolve_precision(args.cpu_precision, torch.device(device).type),
                            progress=not args.no_progress, inputs={"model": args.model})
    print(f"infer-seg rank {summary['rank']}/{summary['world_size']}: {summary['images']} images in "
          f"{summary['seconds']:.1f} s ({summary['images_per_second']:.2f} img/s), "
          f"{summary['skipped']} already done, in {args.out}")
    if args.no_eval:
        return
    if world_size() > 1:
        print("evaluation skipped under torchrun: run `wsss-fast eval` once every rank has finished")
        return
    names = voc.split(args.split)
    gt = args.gt
    if gt is None:
        gt = voc.root / "SegmentationClass"
        if not all((gt / f"{n}.png").is_file() for n in names):
            print(f"no ground truth for every image of the split in {gt}: evaluation skipped (give --gt)")
            return
    scores = evaluate_label_dirs(args.out, gt, len(voc.class_names), names=names,
                                 progress=not args.no_progress)
    print(format_table(scores, voc.class_names))
