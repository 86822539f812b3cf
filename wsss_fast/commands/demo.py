"""``wsss-fast demo``: builds the bundled dataset and runs the whole
pipeline on it (configs/demo.yaml) on the CPU, once or once per seed."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import int_at_least, output_dir


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="the whole pipeline on the bundled demo dataset (CPU, about 10 minutes on 2 cores)",
        description="Writes the bundled demo dataset (Fashion-MNIST items on real photographs, 10 "
                    "classes) to OUT/data, then runs configs/demo.yaml on it: classifier, CAMs, "
                    "AffinityNet and random walk (PSA), IRN's boundary random walk, CRF, segmentation "
                    "network, with the mIoU of each stage. Prints the table and writes OUT/summary.json "
                    "and OUT/report/index.html. With --seeds, one run per seed (every training stage "
                    "seeded) in OUT/seed<S>, then each result's mean, standard deviation and range over "
                    "the seeds (OUT/seeds.json). Running it again resumes.")
    p.add_argument("--out", type=output_dir, default=Path("demo-run"), help="output folder (default ./demo-run)")
    p.add_argument("--n-train", type=int_at_least(8), default=2000, metavar="N", help="train images (default 2000)")
    p.add_argument("--n-val", type=int_at_least(4), default=300, metavar="N", help="val images (default 300)")
    p.add_argument("--size", type=int_at_least(32, at_most=1024), default=128, metavar="S",
                   help="image side, 32..1024 (default 128)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, metavar="S",
                       help="seed of every training stage (default: each stage's own default)")
    seeds.add_argument("--seeds", type=_seeds, metavar="S,S,...",
                       help="comma-separated seeds: one run per seed (at least 2), then mean and spread")
    p.add_argument("--compare", action="store_true",
                   help="also run and compare the references' alternatives on the same data (about 40 "
                        "minutes on 2 cores): the pipeline with IRN's boundary random walk beside PSA's in "
                        "OUT/compare, SC-CAM rounds starting from its classifier as round 0 in "
                        "OUT/compare/sccam (each round's CAM mIoU and the purity of its sub-category "
                        "clusters against the hidden sub-types), and DRS in OUT/compare/drs (its CAMs and "
                        "its refinement, DRS-dagger, with the background of make-saliency's maps, and its "
                        "pseudo labels); one table, OUT/compare.json")
    p.add_argument("--rounds", type=int_at_least(1), default=2, metavar="R",
                   help="with --compare: SC-CAM rounds after round 0 (default 2)")
    p.add_argument("--round-images", type=int_at_least(1), default=500, metavar="N",
                   help="with --compare: training images each SC-CAM round's CAMs are scored on (the "
                        "first N; default 500)")
    p.add_argument("--device", help="torch device (default cpu)")
    p.add_argument("--force", action="append", default=[], metavar="STAGE",
                   help="recompute STAGE and every stage after it; repeatable")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="overrides of configs/demo.yaml (e.g. stages.train-cls.epochs=1)")
    p.set_defaults(func=run, trailing_positionals="overrides")


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def run(args: argparse.Namespace) -> None:
    from ..config import CONFIG_DIR, load_config
    from ..data.demo import make_demo_data
    from ..errors import UsageError
    from ..pipeline import format_seed_table, run_pipeline, summarise_seeds, with_seed
    from ..storage import write_text_atomic

    if args.seeds is not None and len(set(args.seeds)) < 2:
        raise UsageError(f"--seeds needs at least two different seeds, got {args.seeds}")
    data = args.out / "data"
    make_demo_data(data, n_train=args.n_train, n_val=args.n_val, size=args.size, progress=True)
    config = load_config(CONFIG_DIR / "demo.yaml", args.overrides)
    config.update(voc=str(data), device=args.device or config.get("device") or "cpu")
    if args.compare:
        if args.seeds is not None:
            raise UsageError("--compare runs one seed; give --seed, not --seeds")
        from ..stages.compare import run_comparison

        config = config if args.seed is None else with_seed(config, args.seed)
        run_comparison(config, args.out, rounds=args.rounds, round_images=args.round_images, force=args.force)
        return
    if args.seeds is None:
        config = {**config, "out": str(args.out)}
        summary = run_pipeline(config if args.seed is None else with_seed(config, args.seed), force=args.force)
        if summary is not None:  # rank 0
            print(f"demo: {summary['total_seconds']:.0f} s in all; {args.out / 'summary.json'}, "
                  f"{args.out / 'report' / 'index.html'}")
        return
    summaries = {}
    for seed in dict.fromkeys(args.seeds):
        print(f"demo: seed {seed}", flush=True)
        summaries[seed] = run_pipeline(with_seed({**config, "out": str(args.out / f"seed{seed}")}, seed),
                                       force=args.force)
    if None in summaries.values():  # not rank 0
        return
    result = summarise_seeds(summaries)
    write_text_atomic(args.out / "seeds.json", json.dumps(result, indent=1) + "\n")
    print(format_seed_table(result))
    print(f"demo: {len(summaries)} seeds, {sum(result['seconds'].values()):.0f} s in all; {args.out / 'seeds.json'}")
