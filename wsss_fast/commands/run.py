"""``wsss-fast run CONFIG [key=value ...]``: every stage of the pipeline
from a YAML config (see wsss_fast.pipeline and wsss_fast.config)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="run the pipeline stages of a YAML config",
        description="Runs the stages a config enables, in pipeline order, each as its own subcommand "
                    "with the options given under stages.<name> (the command's flags without dashes). "
                    "Finished stages are skipped, so running again resumes. Writes OUT/summary.json, "
                    "prints the stage table and writes the HTML report to OUT/report. Examples: "
                    "configs/demo.yaml, configs/voc_sccam.yaml, configs/voc_drs.yaml.")
    p.add_argument("config", type=Path, help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, dotted keys, YAML values (e.g. stages.train-cls.epochs=2 out=runs/x)")
    p.add_argument("--check", action="store_true", help="only validate the config and print the stage commands")
    p.add_argument("--force", action="append", default=[], metavar="STAGE",
                   help="recompute STAGE and every stage after it (their outputs are deleted first); "
                        "repeatable")
    p.set_defaults(func=run, trailing_positionals="overrides")


def run(args: argparse.Namespace) -> None:
    from ..config import load_config
    from ..pipeline import describe, run_pipeline, validate

    config = load_config(args.config, args.overrides)
    if args.check:
        print(describe(validate(config)))
        return
    run_pipeline(config, force=args.force)
