"""``wsss-fast run``: every stage of the pipeline from one config, each
stage being one of the subcommands, run in order with its outputs wired to
the next stages' inputs.

Layout of a run folder (``out``)::

    <stage>/            the stage's outputs (model, CAMs, label maps, ...)
    <stage>/stage.json  written when the stage finished: seconds, metrics
    splits/<split>.txt  the image lists the stages share
    summary.json        {"stages": [{"name", "command", "miou", "metric",
                        "value", "seconds", "skipped"}, ...], "table": [{"name",
                        "metric", "value", "miou"}, ...]}
    report/index.html   overlays of images, CAMs and final labels

A stage whose stage.json exists is skipped (its recorded numbers are
reused), so an interrupted run continues with the stage it was in; that
stage itself resumes (training from its last epoch, inference from the
images without outputs). A finished stage is reused only when its options
and every earlier stage's are those of this run (stage.json records them);
otherwise the run stops with a one-line error, and ``run --force STAGE``
recomputes that stage and those after it.

Under torchrun every rank runs the training and inference stages (which
split their work over the ranks); evaluation stages run on rank 0 alone while
the others wait. After each stage the ranks meet, and rank 0 alone writes
stage.json, summary.json and the report.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import distributed
from .config import check_top_level, options_to_argv
from .errors import UsageError
from .storage import output_dir_problem, write_text_atomic

STAGE_FILE = "stage.json"


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline.

    name: its config section and output folder. command: the subcommand it
    runs. wiring: (run, stage folder) -> the flags it gets from the run's
    layout; the config's options for the stage come on top. title: its row
    of the results table, for evaluation stages. metric: the key of the
    evaluation's ``eval.json`` that is the row's figure (a fraction; one of
    :data:`METRICS`): the mIoU, or eval-saliency's max F-measure.
    """
    name: str
    command: str
    wiring: Callable[["Run", Path], dict]
    title: str | None = None
    metric: str = "miou"


# figures an evaluation stage can report: eval.json key -> label in the printed table
METRICS = {"miou": "mIoU", "max_f": "max F"}


class Run:
    """The paths and choices of one pipeline run (see the module docstring)."""

    def __init__(self, config: dict):
        self.config = config
        self.out = Path(config.get("out") or "runs/wsss-fast")
        self.voc = Path(config["voc"])
        self.device = config.get("device")
        self.train_split = config.get("train_split", "train")
        self.val_split = config.get("val_split", "val")
        self.eval_split = config.get("eval_split", self.train_split)
        stages = config.get("stages") or {}
        self.options = {name: dict(stages[name] or {}) for name in stages}
        self.enabled = [s.name for s in STAGES if s.name in self.options
                        and self.options[s.name].pop("enabled", True) is not False]

    def dir(self, stage: str) -> Path:
        return self.out / stage

    def has(self, stage: str) -> bool:
        return stage in self.enabled

    def split_file(self, split: str) -> Path:
        """The split's image list as a file in the run folder."""
        from .data.voc import VOCRoot

        path = self.out / "splits" / f"{Path(split).stem}.txt"
        if not path.is_file():
            write_text_atomic(path, "\n".join(VOCRoot(self.voc).split(split)) + "\n")
        return path

    def data(self, split: str) -> dict:
        return {"voc": self.voc, "split": split}

    def evaluation(self, split: str, stage_dir: Path) -> dict:
        """Flags of eval / eval-cam against the split's ground truth."""
        from .data.voc import VOCRoot

        voc = VOCRoot(self.voc)
        if not voc.mask_dirs:
            raise UsageError(f"{voc.root} has no ground-truth masks; leave the eval stages out of the config")
        return {"gt": voc.mask_dirs[0], "names": self.split_file(split), "json": stage_dir / "eval.json",
                "no_progress": True}

    def cams(self) -> Path:
        """The CAMs later stages use: the refined ones when refinement runs."""
        return self.dir("make-cam-refined") if self.has("make-cam-refined") else self.dir("make-cam")

    def pseudo_label_stage(self) -> str | None:
        """The stage whose labels the segmentation network trains on: the
        config's ``pseudo_labels``, else the first of PSA's random walk + CRF,
        PSA's random walk, IRN's random walk and the CAM labels that the run
        makes (None: none of them)."""
        chosen = self.config.get("pseudo_labels")
        if chosen is not None:
            if chosen not in PSEUDO_LABEL_STAGES:
                raise UsageError(f"pseudo_labels must be one of {', '.join(PSEUDO_LABEL_STAGES)}, got {chosen!r}")
            if not self.has(chosen):
                raise UsageError(f"pseudo_labels: {chosen!r} is not a stage of this config")
            return chosen
        return next((s for s in PSEUDO_LABEL_STAGES if self.has(s)), None)

    def pseudo_labels(self) -> Path:
        """The folder of :meth:`pseudo_label_stage`."""
        stage = self.pseudo_label_stage()
        if stage is None:
            raise UsageError(f"train-seg needs pseudo labels: enable one of {', '.join(PSEUDO_LABEL_STAGES)}")
        return self.dir(stage)

    def compute(self) -> dict:
        return {"device": self.device} if self.device else {}


STAGES = [
    Stage("train-cls", "train-cls",
          lambda r, d: {**r.data(r.train_split), "out": d, "resume": True, **r.compute()}),
    Stage("make-cam", "make-cam",
          lambda r, d: {**r.data(r.train_split), "model": r.dir("train-cls"), "out": d, **r.compute()}),
    Stage("make-saliency", "make-saliency", lambda r, d: {**r.data(r.train_split), "out": d}),
    Stage("eval-saliency", "eval-saliency",
          lambda r, d: {**r.data(r.eval_split), "saliency": r.dir("make-saliency"), "out": d / "eval.json",
                        "no_progress": True}, "Saliency max F", metric="max_f"),
    Stage("eval-cam", "eval-cam",
          lambda r, d: {"cam": r.dir("make-cam"), **r.evaluation(r.eval_split, d)}, "CAM"),
    Stage("train-refine", "train-refine",
          lambda r, d: {**r.data(r.train_split), "classifier": r.dir("train-cls"), "cams": r.dir("make-cam"),
                        "out": d, "resume": True, **r.compute()}),
    Stage("make-cam-refined", "make-cam",
          lambda r, d: {**r.data(r.train_split), "model": r.dir("train-refine"), "out": d, **r.compute()}),
    Stage("eval-cam-refined", "eval-cam",
          lambda r, d: {"cam": r.dir("make-cam-refined"), **r.evaluation(r.eval_split, d)}, "CAM (refined)"),
    Stage("make-labels", "make-labels",
          lambda r, d: {"cam": r.cams(), "names": r.split_file(r.train_split), "out": d}),
    Stage("eval-labels", "eval",
          lambda r, d: {"pred": r.dir("make-labels"), **r.evaluation(r.eval_split, d)}, "CAM pseudo labels"),
    Stage("make-aff-labels", "make-aff-labels",
          lambda r, d: {**r.data(r.train_split), "cam": r.cams(), "out": d}),
    Stage("train-aff", "train-aff",
          lambda r, d: {**r.data(r.train_split), "labels": r.dir("make-aff-labels"), "init": r.dir("train-cls"),
                        "out": d, "resume": True, **r.compute()}),
    Stage("rw", "rw",
          lambda r, d: {**r.data(r.train_split), "model": r.dir("train-aff"), "cam": r.cams(), "out": d,
                        **r.compute()}),
    Stage("eval-rw", "eval", lambda r, d: {"pred": r.dir("rw"), **r.evaluation(r.eval_split, d)}, "CAM + RW"),
    Stage("rw-crf", "rw",
          lambda r, d: {**r.data(r.train_split), "model": r.dir("train-aff"), "cam": r.cams(), "out": d,
                        "crf": "psa", **r.compute()}),
    Stage("eval-rw-crf", "eval",
          lambda r, d: {"pred": r.dir("rw-crf"), **r.evaluation(r.eval_split, d)}, "CAM + RW + CRF"),
    Stage("make-ir-labels", "make-ir-labels",
          lambda r, d: {**r.data(r.train_split), "cam": r.cams(), "out": d}),
    Stage("train-irn", "train-irn",
          lambda r, d: {**r.data(r.train_split), "labels": r.dir("make-ir-labels"), "out": d, "resume": True,
                        **r.compute()}),
    Stage("rw-irn", "rw",
          lambda r, d: {**r.data(r.train_split), "method": "irn", "model": r.dir("train-irn"), "cam": r.cams(),
                        "out": d, **r.compute()}),
    Stage("eval-rw-irn", "eval",
          lambda r, d: {"pred": r.dir("rw-irn"), **r.evaluation(r.eval_split, d)}, "CAM + IRN"),
    Stage("train-seg", "train-seg",
          lambda r, d: {**r.data(r.train_split), "labels": r.pseudo_labels(), "out": d, "resume": True,
                        **r.compute()}),
    Stage("infer-seg", "infer-seg",
          lambda r, d: {**r.data(r.val_split), "model": r.dir("train-seg"), "out": d, "no_eval": True,
                        **r.compute()}),
    Stage("eval-seg", "eval",
          lambda r, d: {"pred": r.dir("infer-seg"), **r.evaluation(r.val_split, d)}, "DeepLab"),
    Stage("infer-seg-crf", "infer-seg",
          lambda r, d: {**r.data(r.val_split), "model": r.dir("train-seg"), "out": d, "no_eval": True,
                        "crf": True, **r.compute()}),
    Stage("eval-seg-crf", "eval",
          lambda r, d: {"pred": r.dir("infer-seg-crf"), **r.evaluation(r.val_split, d)}, "DeepLab + CRF"),
]
STAGE_NAMES = [s.name for s in STAGES]
# stages that make pseudo labels, in the order train-seg picks them by default, with their evaluation
PSEUDO_LABEL_STAGES = ("rw-crf", "rw", "rw-irn", "make-labels")
EVALUATION_OF = {"rw-crf": "eval-rw-crf", "rw": "eval-rw", "rw-irn": "eval-rw-irn", "make-labels": "eval-labels"}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def stage_options(run: Run, stage: Stage) -> dict:
    """The stage's wiring, then its config options (which win); an option
    value "@<stage>" stands for that stage's output folder (e.g.
    ``init: "@train-cls"`` starts train-seg from the classifier)."""
    options = {**stage.wiring(run, run.dir(stage.name)), **run.options.get(stage.name, {})}
    for key, value in options.items():
        if isinstance(value, str) and value.startswith("@"):
            if value[1:] not in STAGE_NAMES:
                raise UsageError(f"stages.{stage.name}.{key}: {value!r} names no stage")
            options[key] = run.dir(value[1:])
    return options


def stage_argv(run: Run, stage: Stage, parsers: dict[str, argparse.ArgumentParser]) -> list[str]:
    """The command-line arguments of a stage: its wiring, then its config
    options (which win)."""
    if stage.command not in parsers:
        raise UsageError(f"stage {stage.name}: this wsss-fast has no {stage.command!r} command")
    return options_to_argv(parsers[stage.command], stage_options(run, stage), f"stages.{stage.name}")


def stage_args(run: Run, stage: Stage, parsers: dict[str, argparse.ArgumentParser]) -> argparse.Namespace:
    """The parsed arguments of a stage, through the subcommand's own parser,
    so that the config is checked exactly as the command line would be; a
    rejected value is a one-line UsageError naming the stage."""
    argv = stage_argv(run, stage, parsers)
    messages = io.StringIO()
    try:
        with contextlib.redirect_stderr(messages):
            return parsers[stage.command].parse_args(argv)
    except SystemExit:
        lines = [line for line in messages.getvalue().splitlines() if "error:" in line]
        reason = lines[-1].split("error:", 1)[1].strip() if lines else f"rejected {' '.join(argv)}"
        raise UsageError(f"stages.{stage.name}: {stage.command} {reason}") from None


def validate(config: dict) -> Run:
    """Checks every key and value of the config against the stages'
    commands, before anything runs; returns the Run."""
    from .cli import build_parser

    check_top_level(config, STAGE_NAMES)
    run = Run(config)
    problem = output_dir_problem(run.out)
    if problem:
        raise UsageError(f"out: {problem}")
    parsers = _subparsers(build_parser())
    for stage in STAGES:
        if stage.name in run.options:
            if stage.command not in parsers:
                raise UsageError(f"stage {stage.name}: this wsss-fast has no {stage.command!r} command")
            options_to_argv(parsers[stage.command], run.options[stage.name], f"stages.{stage.name}")
    run.pseudo_label_stage()  # a bad pseudo_labels choice fails here
    for stage in STAGES:
        if run.has(stage.name):
            stage_args(run, stage, parsers)
    return run


def describe(run: Run) -> str:
    """The command line of every enabled stage, for ``run --check``."""
    from .cli import build_parser

    parsers = _subparsers(build_parser())
    lines = []
    for stage in (s for s in STAGES if run.has(s.name)):
        argv = stage_argv(run, stage, parsers)
        lines.append(f"[{stage.name}] wsss-fast {stage.command} {' '.join(argv)}")
    return "\n".join(lines)


# Flags that change how a stage runs, not what it computes: a finished stage
# is not recomputed when only these change.
RUNTIME_FLAGS = ("--device", "--num-workers", "--workers", "--crf-workers", "--no-progress", "--resume")


def effective_options(argv: list[str], out: Path) -> dict[str, list[str]]:
    """A stage's command line as flag -> values, without :data:`RUNTIME_FLAGS`
    and with paths inside the run folder ``out`` written ``$OUT/...``, so
    that a run folder that was moved or copied is still recognised."""
    options: dict[str, list[str]] = {}
    flag, prefix = None, str(out)
    for item in argv:
        if item.startswith("--"):
            flag = item
            options.setdefault(flag, [])
        elif flag is not None:
            inside = item == prefix or item.startswith(prefix + os.sep)
            options[flag].append("$OUT" + item[len(prefix):] if inside else item)
    return {k: v for k, v in options.items() if k not in RUNTIME_FLAGS}


def fingerprint(options: dict, upstream: str) -> str:
    """Identity of a stage's work: its options and everything before it."""
    return hashlib.sha256(json.dumps([upstream, options], sort_keys=True).encode()).hexdigest()[:16]


def _option_changes(before: dict, now: dict) -> str:
    keys = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    shown = [f"{k} {' '.join(before[k]) if k in before else '(unset)'} -> "
             f"{' '.join(now[k]) if k in now else '(unset)'}" for k in keys[:3]]
    return ", ".join(shown) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def read_marker(marker: Path) -> dict:
    """A finished stage's stage.json; UsageError in one line when damaged."""
    try:
        record = json.loads(marker.read_text())
        if not isinstance(record, dict) or "seconds" not in record:
            raise ValueError("not a stage record")
        return record
    except (OSError, ValueError) as exc:
        raise UsageError(f"{marker} is damaged ({exc}); run again with --force "
                         f"{marker.parent.name} to recompute that stage") from None


def check_finished(stage: Stage, record: dict, options: dict, identity: str) -> None:
    """Refuses to reuse a finished stage whose options, or an earlier
    stage's, differ from this run's."""
    if record.get("fingerprint") == identity:
        return
    changes = _option_changes(record.get("options") or {}, options)
    what = (f"with other options ({changes})" if changes else
            "after other earlier stages (an earlier stage's options differ)")
    raise UsageError(f"stage {stage.name} finished before {what}; run again with --force {stage.name} "
                     "to recompute it and the stages after it, or choose another out folder")


def force_stages(run: Run, names: list[str]) -> None:
    """Deletes the outputs of the earliest of ``names`` and of every enabled
    stage after it, so that they are computed again."""
    unknown = [n for n in names if not run.has(n)]
    if unknown:
        raise UsageError(f"--force {unknown[0]}: not an enabled stage of this config "
                         f"(enabled: {', '.join(run.enabled)})")
    first = min(STAGE_NAMES.index(n) for n in names)
    for stage in STAGES[first:]:
        folder = run.dir(stage.name)
        if run.has(stage.name) and folder.exists():
            print(f"[{stage.name}] --force: removing {folder}", flush=True)
            shutil.rmtree(folder)


def run_pipeline(config: dict, *, force: list[str] | tuple = (), progress: bool = True) -> dict | None:
    """Runs the enabled stages in order (skipping finished ones) and writes
    summary.json and the report; returns the summary (None on the ranks
    other than 0 under torchrun).

    Each stage.json records the stage's options and a fingerprint of them
    and of every earlier stage's; a finished stage whose fingerprint differs
    from this run's is refused (:func:`check_finished`) rather than reused,
    unless ``force`` names it or an earlier stage (then it is recomputed)."""
    from .cli import build_parser

    run = validate(config)
    if not run.enabled:
        raise UsageError("the config enables no stage")
    parsers = _subparsers(build_parser())
    run.out.mkdir(parents=True, exist_ok=True)
    main = distributed.is_main()
    if force:
        if main:
            force_stages(run, list(force))
        distributed.barrier()
    records = []
    upstream = ""
    for stage in (s for s in STAGES if run.has(s.name)):
        marker = run.dir(stage.name) / STAGE_FILE
        options = effective_options(stage_argv(run, stage, parsers), run.out)
        upstream = fingerprint(options, upstream)
        if marker.is_file():
            record = read_marker(marker)
            check_finished(stage, record, options, upstream)
            record["skipped"] = True
            if main:
                print(f"[{stage.name}] done before ({record['seconds']:.1f} s), skipped")
        else:
            start = time.perf_counter()
            if main or stage.title is None:  # an evaluation (it has a title) runs once, on rank 0
                args = stage_args(run, stage, parsers)
                if main:
                    print(f"[{stage.name}] wsss-fast {stage.command} ...", flush=True)
                status = args.func(args)
                if status not in (None, 0):
                    raise UsageError(f"stage {stage.name} failed with status {status}")
            distributed.barrier()  # every rank is done with the stage
            if not main:
                continue
            value = _figure(run.dir(stage.name), stage)
            record = {"name": stage.name, "command": stage.command, "title": stage.title,
                      "seconds": time.perf_counter() - start,
                      "miou": value if stage.metric == "miou" else None,
                      "metric": stage.metric if stage.title else None, "value": value,
                      "options": options, "fingerprint": upstream}
            write_text_atomic(marker, json.dumps(record, indent=1) + "\n")
            record["skipped"] = False
            print(f"[{stage.name}] {record['seconds']:.1f} s"
                  + (f", {METRICS[stage.metric]} {100 * value:.2f}%" if value is not None else ""), flush=True)
        records.append(record)
    if not main:
        return None
    summary = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in config.items()},
               "stages": records,
               "table": [_row(r) for r in records if r["title"]],
               "total_seconds": sum(r["seconds"] for r in records)}
    write_text_atomic(run.out / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    print(format_summary(summary))
    _report(run, parsers)
    return summary


def with_seed(config: dict, seed: int) -> dict:
    """A copy of ``config`` in which every enabled stage whose command takes
    ``--seed`` (the training stages) gets ``seed``."""
    from .cli import build_parser

    parsers = _subparsers(build_parser())
    stages = {name: dict(options or {}) for name, options in (config.get("stages") or {}).items()}
    for stage in STAGES:
        if stage.name in stages and "--seed" in parsers[stage.command]._option_string_actions:
            stages[stage.name]["seed"] = seed
    return {**config, "stages": stages}


def summarise_seeds(summaries: dict[int, dict]) -> dict:
    """The table rows of runs that differ only in their seed: per row title,
    every seed's value, the mean, the sample standard deviation (n - 1), the
    minimum and the maximum (fractions; None where a run has no value)."""
    rows = []
    titles = [row["name"] for row in next(iter(summaries.values()))["table"]]
    for title in titles:
        values = {seed: next((_value(r) for r in s["table"] if r["name"] == title), None)
                  for seed, s in summaries.items()}
        known = [v for v in values.values() if v is not None]
        mean = sum(known) / len(known) if known else None
        std = (math.sqrt(sum((v - mean) ** 2 for v in known) / (len(known) - 1)) if len(known) > 1 else None)
        rows.append({"name": title, "values": values, "mean": mean, "std": std,
                     "min": min(known) if known else None, "max": max(known) if known else None})
    return {"seeds": list(summaries), "rows": rows,
            "seconds": {seed: s["total_seconds"] for seed, s in summaries.items()}}


def format_seed_table(result: dict, column: str = "seed {}") -> str:
    """The rows of :func:`summarise_seeds` as a text table (mIoU or F-measure,
    in %); ``column`` formats each run's key into its column title."""
    def pct(v):
        return f"{100 * v:6.2f}" if v is not None else "     -"

    seeds = result["seeds"]
    head = f"{'result':<22}" + "".join(f" {column.format(s):>8}" for s in seeds) + "     mean     std   min..max"
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        lines.append(f"{r['name']:<22}" + "".join(f" {pct(r['values'][s]):>8}" for s in seeds)
                     + f"   {pct(r['mean'])}  {pct(r['std'])}   {pct(r['min']).strip()}..{pct(r['max']).strip()}")
    return "\n".join(lines)


def _figure(stage_dir: Path, stage: Stage) -> float | None:
    """An evaluation stage's figure (``stage.metric`` of its eval.json); None
    for other stages and for NaN."""
    if stage.title is None:
        return None
    value = json.loads((stage_dir / "eval.json").read_text())[stage.metric]
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _value(record: dict) -> float | None:
    """A stage record's or table row's figure (records of older runs have
    only ``miou``)."""
    return record.get("value", record.get("miou"))


def _row(record: dict) -> dict:
    """A table row: name, metric ("miou" or "max_f"), value, and ``miou``
    (the value for mIoU rows, None for the others)."""
    metric = record.get("metric") or "miou"
    value = _value(record)
    return {"name": record["title"], "metric": metric, "value": value,
            "miou": value if metric == "miou" else None}


def format_summary(summary: dict) -> str:
    """The stage table: seconds of every stage, the figure of the
    evaluations (mIoU, or the max F-measure of "Saliency max F")."""
    lines = [f"{'stage':<18} {'seconds':>9}  {'value':>7}  result", "-" * 58]
    for r in summary["stages"]:
        value = _value(r)
        shown = f"{100 * value:6.2f}%" if value is not None else ""
        lines.append(f"{r['name']:<18} {r['seconds']:>9.1f}  {shown:>7}  {r['title'] or ''}")
    lines.append("-" * 58)
    lines.append(f"{'total':<18} {summary['total_seconds']:>9.1f}")
    return "\n".join(lines)


def _report(run: Run, parsers: dict) -> None:
    """The HTML report of the train split: CAMs and the final pseudo labels."""
    if "make-cam" not in run.enabled:
        return
    labels = run.pseudo_label_stage()
    evaluated = EVALUATION_OF.get(labels)
    options = {**run.data(run.train_split), "cam": run.cams(), "out": run.out / "report"}
    if labels:
        options["pred"] = run.dir(labels)
    if evaluated and run.has(evaluated):
        options["eval_json"] = run.dir(evaluated) / "eval.json"
    args = parsers["report"].parse_args(options_to_argv(parsers["report"], options, "report"))
    args.func(args)
