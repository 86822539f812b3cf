"""``wsss-fast make-saliency`` (classical saliency maps with OpenCV, for
DRS's saliency background without PoolNet's maps) and ``wsss-fast
eval-saliency`` (their quality against the masks' foreground)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import add_split_flags, int_at_least, json_file, output_dir


def add_parser(subparsers) -> None:
    from ..stages.saliency import DEFAULT_METHOD, METHODS

    p = subparsers.add_parser(
        "make-saliency", help="saliency maps (8-bit grey PNGs) with OpenCV's classical static saliency",
        description="For every image of the split, OpenCV's static saliency (cv2.saliency; needs "
                    "pip install opencv-contrib-python-headless), min-max normalised to 0..255, written as "
                    "OUT/<name>.png at image resolution: the format make-labels --saliency and eval-cam "
                    "--saliency read (salient where > 50). Existing PNGs are kept (resume); under torchrun "
                    "the rest is split over the ranks.")
    add_split_flags(p)
    p.add_argument("--out", type=output_dir, required=True, metavar="DIR", help="output folder of <name>.png")
    p.add_argument("--method", choices=tuple(METHODS), default=DEFAULT_METHOD,
                   help=f"OpenCV's StaticSaliencyFineGrained or StaticSaliencySpectralResidual (default "
                        f"{DEFAULT_METHOD}: the better F-measure at DRS's threshold on the demo data's train "
                        "split, see README)")
    p.add_argument("--workers", type=int_at_least(1), default=None, metavar="N",
                   help="threads (default: the cores this process may use)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_make)

    p = subparsers.add_parser(
        "eval-saliency", help="quality of saliency maps against the foreground of the ground-truth masks",
        description="Foreground = any object class of the masks (255 ignored). Max F-measure over the "
                    "thresholds 0..255 (salient where > t), F-measure at each image's adaptive threshold "
                    "(>= 2 x its mean saliency, Achanta et al.), both with beta^2 = 0.3 (salient-object "
                    "detection's convention), and MAE of the maps scaled to [0, 1]; precision, recall and "
                    "MAE pooled over all non-void pixels of the split; also the F-measure at > 50, the "
                    "threshold of DRS's rule (make-labels, eval-cam --saliency). Prints one line; --out "
                    "writes JSON (with the precision-recall curve).")
    add_split_flags(p)
    p.add_argument("--saliency", type=Path, required=True, metavar="DIR",
                   help="saliency maps <name>.png, grey 0-255 (make-saliency, or e.g. PoolNet's)")
    p.add_argument("--out", type=json_file, metavar="JSON", help="write the scores as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_eval)


def _voc_and_names(args: argparse.Namespace):
    """The dataset and the split's names; errors name --voc or --split."""
    from ..data.voc import VOCRoot
    from ..errors import DataError

    try:
        voc = VOCRoot(args.voc)
    except DataError as exc:
        raise DataError(f"--voc: {exc}") from None
    try:
        return voc, voc.split(args.split)
    except DataError as exc:
        raise DataError(f"--split {args.split}: {exc}") from None


def run_make(args: argparse.Namespace) -> None:
    from ..stages.saliency import make_saliency

    voc, names = _voc_and_names(args)
    summary = make_saliency(voc, names, args.out, method=args.method, workers=args.workers,
                            progress=not args.no_progress)
    per_image = f", {1000 * summary['seconds'] / summary['written']:.1f} ms/img" if summary["written"] else ""
    print(f"make-saliency ({args.method}): {summary['written']} written, {summary['skipped']} already done, "
          f"in {summary['seconds']:.1f} s{per_image} -> {args.out}")


def run_eval(args: argparse.Namespace) -> None:
    from ..errors import DataError
    from ..stages.labels import SALIENCY_THRESHOLD
    from ..stages.saliency import evaluate_saliency_dir
    from ..storage import write_text_atomic
    from .evaluate import _finite_or_none

    voc, names = _voc_and_names(args)
    if not args.saliency.is_dir():
        raise DataError(f"--saliency {args.saliency} is not a directory")
    scores = evaluate_saliency_dir(voc, names, args.saliency, progress=not args.no_progress)

    def pct(v):
        return "-" if v is None or v != v else f"{100 * v:.2f}%"

    best = scores["max_f_threshold"]
    curve, t = scores["curve"], int(SALIENCY_THRESHOLD)
    at_rule = {"threshold": t, "f": curve["f"][t], "precision": curve["precision"][t], "recall": curve["recall"][t]}
    print(f"eval-saliency: max F {pct(scores['max_f'])} (beta^2 {scores['beta2']:g}"
          + (f", salient > {best}" if best is not None else "") + f"), F at > {t} (DRS's rule) "
          f"{pct(at_rule['f'])}, adaptive F {pct(scores['adaptive_f'])}, MAE {scores['mae']:.4f} over "
          f"{scores['num_images']} images ({args.split}; pixels pooled)" + (f" -> {args.out}" if args.out else ""))
    if args.out:
        payload = {**scores, "f_at_saliency_threshold": at_rule, "saliency": str(args.saliency),
                   "voc": str(voc.root), "split": str(args.split)}
        write_text_atomic(args.out, json.dumps(_finite_or_none(payload), indent=1) + "\n")
