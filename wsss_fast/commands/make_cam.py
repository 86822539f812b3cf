"""``wsss-fast make-cam``: CAMs of a split from a trained classifier or DRS
refinement network, one ``<name>.npz`` per image (see wsss_fast.stages.cam)."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import add_device_flag, default_device, int_at_least, output_dir


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "make-cam", help="multi-scale CAMs of a split (PSA / SC-CAM or DRS procedure)",
        description="Runs a trained classifier (or DRS refinement network) over every image of a "
                    "split at several scales, fuses and normalises the maps, keeps the classes of "
                    "the image label (from the masks or cls_labels) and writes OUT/<name>.npz at image "
                    "resolution. Images whose file exists are skipped; under torchrun the "
                    "remaining images are split over the ranks.")
    p.add_argument("--model", type=Path, required=True, metavar="PATH",
                   help="final.pt of train-cls or train-refine (or its folder)")
    p.add_argument("--voc", type=Path, required=True, metavar="ROOT", help="VOC-style dataset root")
    p.add_argument("--split", default="train", help="split name or list file (default train)")
    p.add_argument("--out", type=output_dir, required=True, metavar="DIR", help="output folder")
    p.add_argument("--preset", choices=("auto", "psa", "drs"), default="auto",
                   help="reference procedure: psa = scales 1, 0.5, 1.5, 2 with flips, summed, "
                        "align_corners False; drs = squares 256, 320, 384, no flip, max of "
                        "per-pass normalised maps, align_corners True (default auto: drs for DRS "
                        "classifiers and refinement networks, psa otherwise)")
    p.add_argument("--scales", type=float, nargs="+", metavar="F", help="input scale factors")
    p.add_argument("--sizes", type=int, nargs="+", metavar="S",
                   help="square input sides in pixels instead of scales (DRS: 256 320 384)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="also run mirrored inputs (default: the preset's)")
    p.add_argument("--fuse", choices=("sum", "max"), help="fusion of the passes (default: the preset's)")
    p.add_argument("--align-corners", action=argparse.BooleanOptionalAction, default=None,
                   help="align_corners of the map upsampling (default: the preset's)")
    p.add_argument("--batch-size", type=int_at_least(1), default=8, metavar="N",
                   help="images of one size per forward group (default 8)")
    p.add_argument("--workers", type=int_at_least(0), default=2, metavar="N",
                   help="image decoding processes (default 2)")
    add_device_flag(p, note="; cuda under torchrun means each rank's LOCAL_RANK GPU")
    p.add_argument("--amp", action="store_true", help="float16 autocast on CUDA (faster, not bit-equal)")
    p.add_argument("--encoding", choices=("float16", "uint8"), default="float16",
                   help="storage of the maps (default float16)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import torch

    from ..stages.cam import make_cams, preset_for, resolve_settings
    from ..data import VOCSegmentation
    from ..distributed import rank, world_size
    from ..errors import UsageError
    from ..models import load_cam_model

    device = default_device(args.device)
    if args.amp and torch.device(device).type != "cuda":
        raise UsageError("--amp needs a CUDA --device")
    model, meta = load_cam_model(args.model)
    preset = preset_for(meta) if args.preset == "auto" else args.preset
    settings = resolve_settings(preset, scales=args.scales, sizes=args.sizes, flip=args.flip, fuse=args.fuse,
                                align_corners=args.align_corners, normalize=meta["kind"] == "classifier")
    dataset = VOCSegmentation(args.voc, args.split, labels=True)
    summary = make_cams(model, dataset, args.out, settings, batch_size=args.batch_size, device=device,
                        num_workers=args.workers, encoding=args.encoding, amp=args.amp,
                        progress=not args.no_progress, inputs={"model": args.model})
    done = len(summary["written"])
    who = f"make-cam (rank {rank()}/{world_size()})" if world_size() > 1 else "make-cam"
    if done == 0:
        print(f"{who}: nothing to do, {summary['skipped']} of {len(dataset)} images have CAMs in {args.out}")
        return
    print(f"{who}: {done} images in {summary['seconds']:.1f} s ({summary['images_per_second']:.2f} "
          f"images/s), {summary['skipped']} already done; {preset}: {settings.describe()}")
