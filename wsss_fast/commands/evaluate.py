"""``wsss-fast eval`` (label maps) and ``wsss-fast eval-cam`` (CAMs with a
background-threshold sweep): print a per-class table, write JSON and plots."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ..errors import UsageError
from . import int_at_least, json_file


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gt", type=Path, required=True, metavar="DIR",
                   help="ground-truth label PNGs (e.g. VOC2012/SegmentationClass)")
    p.add_argument("--num-classes", type=int_at_least(2), metavar="N",
                   help="classes including background (default: class_names.txt beside --gt, else 21)")
    p.add_argument("--names", type=Path, metavar="FILE",
                   help="split list of the images to evaluate (default: every file of the input folder)")
    p.add_argument("--json", type=Path, metavar="OUT",
                   help="write the results as JSON, and plots beside it (OUT stem + _iou.png, _sweep.png)")
    p.add_argument("--no-plots", action="store_true", help="with --json, skip the plots")
    p.add_argument("--device", default="cpu", help="torch device that counts (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_parser(subparsers) -> None:
    from ..stages.labels import ALPHA, SALIENCY_THRESHOLD

    p = subparsers.add_parser(
        "eval", help="mIoU of label-map PNGs against ground truth",
        description="Confusion matrix over all images (gt 255 ignored); per-class IoU, precision, "
                    "recall, F-score, mIoU and pixel accuracy.")
    p.add_argument("--pred", type=Path, required=True, metavar="DIR", help="predicted label PNGs")
    _common(p)
    p.add_argument("--void-pred", choices=("background", "exclude"), default="background",
                   help="predicted 255: count as background (default, as IRN) or leave out and "
                        "report coverage")
    p.set_defaults(func=run_eval)

    p = subparsers.add_parser(
        "eval-cam", help="mIoU of CAMs over a sweep of background thresholds",
        description="Label = argmax over [threshold, CAMs]. Reports the sweep curve, its best "
                    "threshold and the references' fixed thresholds (0.15, 0.2, 0.25).")
    p.add_argument("--cam", type=Path, required=True, metavar="DIR",
                   help="CAM files <name>.npz (wsss_fast.storage format)")
    _common(p)
    p.add_argument("--sweep", default="0:0.6:0.01", metavar="START:STOP:STEP",
                   help="thresholds to sweep, stop included (default 0:0.6:0.01)")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="report the table and top-level JSON at T (default: the sweep's best, which "
                        "is chosen on this ground truth)")
    p.add_argument("--saliency", type=Path, metavar="DIR",
                   help="score with DRS's saliency background instead of a threshold (scripts/test_cls.py): "
                        "maps below --alpha dropped, background = 1 - (saliency > --saliency-threshold), "
                        "argmax; saliency maps <name>.png, grey 0-255")
    p.add_argument("--alpha", type=float, default=ALPHA, help=f"with --saliency: DRS's object cue (default {ALPHA})")
    p.add_argument("--saliency-threshold", type=float, default=SALIENCY_THRESHOLD, metavar="V",
                   help=f"with --saliency: salient where the map is > V of 255 (default {SALIENCY_THRESHOLD}, "
                        "DRS code)")
    p.set_defaults(func=run_eval_cam)

    p = subparsers.add_parser(
        "eval-subcategories", help="purity of SC-CAM's sub-category clusters per round (demo data)",
        description="Scores the clusters each SC-CAM round of a train-cls run trained on against the "
                    "hidden sub-types the demo data records (subcategories.json): per class with "
                    "sub-types, purity, its floor (the largest sub-type's share) and NMI, over the "
                    "images whose items of the class share one sub-type.")
    p.add_argument("--run", type=Path, required=True, metavar="DIR", help="train-cls --method sccam run folder")
    p.add_argument("--voc", type=Path, required=True, metavar="ROOT", help="the dataset it trained on")
    p.add_argument("--json", type=json_file, metavar="OUT", help="write the results as JSON")
    p.set_defaults(func=run_eval_subcategories)


def _finite_or_none(value):
    """NaN -> None, recursively, so that the JSON is standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def _write_json(path: Path, payload: dict) -> None:
    from ..storage import write_text_atomic

    write_text_atomic(path, json.dumps(_finite_or_none(payload), indent=2) + "\n")
    print(f"wrote {path}")


def _names(args) -> list[str] | None:
    from ..data.voc import parse_split_list

    return parse_split_list(args.names) if args.names else None


def run_eval(args: argparse.Namespace) -> None:
    from ..eval import class_names_for, evaluate_label_dirs, format_table
    from ..plots import plot_class_iou

    class_names = class_names_for(args.gt, args.num_classes)
    scores = evaluate_label_dirs(args.pred, args.gt, len(class_names), names=_names(args),
                                 void_pred=args.void_pred, device=args.device,
                                 progress=not args.no_progress)
    print(format_table(scores, class_names))
    if args.void_pred == "exclude":
        print(f"coverage {100 * scores['coverage']:.2f}% (pixels with a label other than 255)")
    if args.json:
        _write_json(args.json, {**scores, "class_names": list(class_names),
                                "pred": str(args.pred), "gt": str(args.gt)})
        if not args.no_plots:
            plot_class_iou(class_names, scores["iou"], args.json.with_name(args.json.stem + "_iou.png"),
                           title=f"mIoU {100 * scores['miou']:.2f}%")


def run_eval_cam(args: argparse.Namespace) -> None:
    from ..eval import (REFERENCE_THRESHOLDS, best_of_sweep, class_names_for, evaluate_cam_dir, format_table,
                        parse_sweep)
    from ..plots import plot_class_iou, plot_threshold_sweep

    if args.saliency is not None:
        return _eval_cam_saliency(args)
    try:
        swept = parse_sweep(args.sweep)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    extra = list(REFERENCE_THRESHOLDS) + ([args.threshold] if args.threshold is not None else [])
    class_names = class_names_for(args.gt, args.num_classes)
    sweep = evaluate_cam_dir(args.cam, args.gt, len(class_names), thresholds=swept + extra,
                             names=_names(args), device=args.device, progress=not args.no_progress)
    results = {r["threshold"]: r for r in sweep.scores()}
    curve = [results[t] for t in sorted(set(swept))]
    best = best_of_sweep(curve)
    chosen = results[args.threshold] if args.threshold is not None else best
    print(format_table(chosen, class_names))
    print(f"threshold {chosen['threshold']:g}"
          + (" (best of the sweep, chosen on this ground truth)" if args.threshold is None else ""))
    print(f"sweep {args.sweep}: best mIoU {100 * best['miou']:.2f}% at {best['threshold']:g}; "
          + ", ".join(f"{100 * results[t]['miou']:.2f}% at {t:g}" for t in REFERENCE_THRESHOLDS))
    if args.json:
        payload = {**chosen, "threshold_source": "--threshold" if args.threshold is not None
                   else "best of sweep (chosen on this ground truth)",
                   "class_names": list(class_names), "cam": str(args.cam), "gt": str(args.gt),
                   "sweep": {"thresholds": [r["threshold"] for r in curve],
                             "miou": [r["miou"] for r in curve]},
                   "best": {"threshold": best["threshold"], "miou": best["miou"]},
                   "fixed": {f"{t:g}": results[t] for t in REFERENCE_THRESHOLDS}}
        _write_json(args.json, payload)
        if not args.no_plots:
            stem = args.json.with_name(args.json.stem)
            marks = {"best": best["threshold"], **{f"ref {t:g}": t for t in REFERENCE_THRESHOLDS}}
            plot_threshold_sweep(payload["sweep"]["thresholds"], payload["sweep"]["miou"],
                                 f"{stem}_sweep.png", marks)
            plot_class_iou(class_names, chosen["iou"], f"{stem}_iou.png",
                           title=f"threshold {chosen['threshold']:g}: mIoU {100 * chosen['miou']:.2f}%")


def _eval_cam_saliency(args: argparse.Namespace) -> None:
    """eval-cam --saliency: one score, DRS's saliency rule, no sweep."""
    from ..eval import class_names_for, format_table
    from ..plots import plot_class_iou
    from ..stages.labels import evaluate_with_saliency

    if args.threshold is not None:
        raise UsageError("--threshold and --saliency exclude each other: the saliency map is the background")
    class_names = class_names_for(args.gt, args.num_classes)
    scores = evaluate_with_saliency(args.cam, args.saliency, args.gt, len(class_names), names=_names(args),
                                    alpha=args.alpha, saliency_threshold=args.saliency_threshold,
                                    device=args.device, progress=not args.no_progress)
    print(format_table(scores, class_names))
    print(f"background from saliency maps {args.saliency} (> {args.saliency_threshold:g}), object cue "
          f"alpha {args.alpha:g}")
    if args.json:
        _write_json(args.json, {**scores, "class_names": list(class_names), "cam": str(args.cam),
                                "gt": str(args.gt), "saliency": str(args.saliency), "alpha": args.alpha,
                                "saliency_threshold": args.saliency_threshold})
        if not args.no_plots:
            plot_class_iou(class_names, scores["iou"], args.json.with_name(args.json.stem + "_iou.png"),
                           title=f"saliency background: mIoU {100 * scores['miou']:.2f}%")


def run_eval_subcategories(args: argparse.Namespace) -> None:
    from ..stages.subcategory_purity import purity_per_round

    result = purity_per_round(args.run, args.voc)
    for r, scores in result["rounds"].items():
        cells = ", ".join(f"{cls} purity {100 * s['purity']:.1f}% (floor {100 * s['majority']:.1f}%, "
                          f"NMI {s['nmi']:.3f}, n {s['n']}, k {s['k']})" for cls, s in scores.items())
        print(f"round {r} clusters (features of round {r - 1}): {cells or 'no class with sub-types'}")
    if args.json:
        _write_json(args.json, result)
