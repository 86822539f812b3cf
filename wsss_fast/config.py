"""Pipeline configs: YAML files whose stage sections hold the flags of the
stage's own subcommand, with ``key=value`` overrides from the command line.

A config is a mapping with the top-level keys of :data:`TOP_KEYS` and a
``stages`` mapping from stage name to that stage's options; an option named
``batch_size`` or ``batch-size`` is the subcommand's ``--batch-size`` flag,
so everything a stage's command accepts can be set in the config and nothing
else can: an unknown key is an error that names it and the stage.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .errors import UsageError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # shipped configs (also ./configs in the repo)

TOP_KEYS = {
    "voc": "VOC-style root (images, and masks or image labels: cls_labels.npz / the references' cls_labels.npy)",
    "out": "output folder of the run (one subfolder per stage)",
    "device": "torch device for every stage (default: cuda if available, else cpu)",
    "train_split": "split the networks train on and pseudo labels are made for",
    "eval_split": "split (a subset of train_split with masks) the pseudo labels are scored on; "
                  "default train_split",
    "val_split": "split the segmentation network is evaluated on",
    "pseudo_labels": "stage whose labels train-seg trains on (rw-crf, rw, rw-irn or make-labels); "
                     "default: the first of them the config enables",
    "stages": "mapping: stage name -> options of its command (flags without the dashes)",
}


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> dict:
    """Reads a YAML config and applies ``key=value`` overrides, where key is
    a dotted path (``stages.train-cls.epochs=2``, ``out=runs/x``) and value
    is parsed as YAML. Raises UsageError naming a missing file, a YAML error
    or a malformed override."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file not found: {path}")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"config {path} is not valid YAML: {exc}") from None
    if not isinstance(config, dict):
        raise UsageError(f"config {path} must be a mapping of keys, got {type(config).__name__}")
    for item in overrides:
        apply_override(config, item)
    return config


def apply_override(config: dict, item: str) -> None:
    """Sets ``a.b.c=value`` in the nested mapping (creating mappings on the way)."""
    if "=" not in item:
        raise UsageError(f"override {item!r} is not KEY=VALUE")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"override {key}: cannot parse {text!r}: {exc}") from None
    parts = key.strip().split(".")
    node = config
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UsageError(f"override {key}: {part!r} is not a mapping")
        node = child
    node[parts[-1]] = value


def check_top_level(config: Mapping[str, Any], stage_names: Sequence[str]) -> None:
    """Unknown top-level keys and unknown stage names are errors that name them."""
    unknown = [k for k in config if k not in TOP_KEYS]
    if unknown:
        raise UsageError(f"unknown config key(s) {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(TOP_KEYS)}")
    if "voc" not in config:
        raise UsageError("the config has no 'voc' (the dataset root)")
    stages = config.get("stages") or {}
    if not isinstance(stages, dict):
        raise UsageError("'stages' must be a mapping of stage name -> options")
    bad = [s for s in stages if s not in stage_names]
    if bad:
        raise UsageError(f"unknown stage(s) {', '.join(map(repr, bad))}; stages: {', '.join(stage_names)}")
    for name, options in stages.items():
        if options is not None and not isinstance(options, dict):
            raise UsageError(f"stages.{name} must be a mapping of options, got {options!r}")


def options_to_argv(parser: argparse.ArgumentParser, options: Mapping[str, Any], where: str) -> list[str]:
    """The command-line arguments of ``parser`` that set ``options``
    (flag name without dashes, ``_`` or ``-`` -> value). Booleans switch
    ``store_true`` / ``--x/--no-x`` flags; lists give several values (or a
    repeated flag for ``append`` options; a mapping there gives KEY=VALUE
    items); None leaves the flag out. An option the parser does not have
    is a UsageError naming ``where`` and the key."""
    argv: list[str] = []
    actions = parser._option_string_actions
    for key, value in options.items():
        flag = "--" + str(key).replace("_", "-")
        action = actions.get(flag)
        if action is None or flag in ("--help",):
            known = sorted(a.lstrip("-") for a in actions if a.startswith("--") and a != "--help")
            raise UsageError(f"{where}: unknown option {key!r}; {parser.prog.split()[-1]} takes: "
                             + ", ".join(known))
        if value is None:
            continue
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            if not isinstance(value, bool):
                raise UsageError(f"{where}.{key} must be true or false, got {value!r}")
            if value == isinstance(action, argparse._StoreTrueAction):
                argv.append(flag)
        elif isinstance(action, argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                raise UsageError(f"{where}.{key} must be true or false, got {value!r}")
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(action, argparse._AppendAction):
            items = ([f"{k}={json.dumps(v)}" for k, v in value.items()] if isinstance(value, dict)
                     else value if isinstance(value, list) else [value])
            for item in items:
                argv += [flag, str(item)]
        elif isinstance(value, dict):
            raise UsageError(f"{where}.{key} takes a value or a list, not a mapping")
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv
