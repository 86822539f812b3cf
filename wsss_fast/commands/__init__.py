"""Command modules of the ``wsss-fast`` command line, one job each; see
:mod:`wsss_fast.cli` for how a module registers its commands."""
from __future__ import annotations

import argparse
import math
from pathlib import Path


def int_at_least(low: int, at_most: int | None = None):
    """argparse ``type=`` for an integer >= ``low`` (and <= ``at_most``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if at_most is not None and value > at_most:
            raise argparse.ArgumentTypeError(f"must be at most {at_most}, got {value}")
        return value
    return parse


def positive_float(text: str) -> float:
    """argparse ``type=`` for a finite number > 0."""
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse ``type=`` for a number >= 0."""
    value = _number(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    """argparse ``type=`` for a probability p with 0 <= p < 1 (e.g. dropout)."""
    value = _number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if math.isnan(value) or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


class Ordered(argparse.Action):
    """``nargs=2`` action whose two values must be in non-decreasing order
    (a LOW HIGH range)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values[0] > values[1]:
            raise argparse.ArgumentError(self, f"{values[0]} is larger than {values[1]}; give LOW HIGH")
        setattr(namespace, self.dest, values)


def output_dir(text: str) -> Path:
    """argparse ``type=`` for an output folder: refused at once when it is a
    file or cannot be created (see :func:`wsss_fast.storage.output_dir_problem`)."""
    from ..storage import output_dir_problem

    problem = output_dir_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return Path(text)


def json_file(text: str) -> Path:
    """argparse ``type=`` for a JSON file to write: refused at once when it
    is a folder or its folder cannot be created."""
    from ..storage import output_dir_problem

    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; give a file name such as {path / 'eval.json'}")
    problem = output_dir_problem(path.parent)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return path


def key_value(text: str) -> tuple[str, object]:
    """argparse ``type=`` for KEY=VALUE, the value parsed as YAML (numbers,
    booleans, strings, lists)."""
    import yaml

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"cannot parse the value of {key!r}: {exc}") from None


def add_split_flags(p: argparse.ArgumentParser) -> None:
    """``--voc DIR`` (required) and ``--split`` (default train_aug)."""
    p.add_argument("--voc", type=Path, required=True, metavar="DIR", help="VOC-style root")
    p.add_argument("--split", default="train_aug", help="split name or list file (default train_aug)")


def add_backbone_flags(g, *, backbone_help: str, weights_help: str) -> None:
    """``--init``, ``--backbone``, ``--weights`` and ``--backbone-option``:
    where a stage's backbone starts from (:class:`wsss_fast.models.initial.BackboneInit`)."""
    g.add_argument("--init", metavar="PATH",
                   help="classifier final.pt (or its folder): the backbone (name, options, weights) to start from")
    g.add_argument("--backbone", help=backbone_help)
    g.add_argument("--weights", metavar="FILE", help=weights_help)
    g.add_argument("--backbone-option", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="backbone option, repeatable (e.g. width=16)")


def add_sgd_flags(t, *, epochs: int, batch_size: int, lr: float, weight_decay: float, momentum: float,
                  reference: str) -> None:
    """``--epochs``, ``--batch-size``, ``--lr``, ``--weight-decay``,
    ``--momentum`` and ``--seed`` with the ``reference``'s defaults."""
    t.add_argument("--epochs", type=int_at_least(1), default=epochs)
    t.add_argument("--batch-size", type=int_at_least(1), default=batch_size)
    t.add_argument("--lr", type=positive_float, default=lr)
    t.add_argument("--weight-decay", type=non_negative_float, default=weight_decay)
    t.add_argument("--momentum", type=non_negative_float, default=momentum,
                   help=f"SGD momentum (default {momentum:g} as {reference})")
    t.add_argument("--seed", type=int, default=0)


def add_device_flag(p: argparse.ArgumentParser, note: str = "") -> None:
    """--device, None unless given: resolve it with :func:`default_device`."""
    p.add_argument("--device", default=None,
                   help=f"torch device (default: cuda if available, else cpu{note})")


def add_precision_flag(p: argparse.ArgumentParser) -> None:
    """--cpu-precision: resolve it with :func:`wsss_fast.cpu.resolve_precision`."""
    from ..cpu import PRECISIONS

    p.add_argument("--cpu-precision", choices=PRECISIONS, default="auto",
                   help="precision of the network on a CPU: bfloat16 (autocast, channels_last) or "
                        "float32; auto (default): bfloat16 where the CPU computes it natively "
                        "(AVX512-BF16 or AMX), float32 elsewhere. Not used on CUDA (see --amp)")


def add_device_flags(p: argparse.ArgumentParser) -> None:
    add_device_flag(p)
    p.add_argument("--num-workers", type=int_at_least(0), default=None, metavar="N",
                   help="data-loading worker processes (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_crf_backend_flag(p: argparse.ArgumentParser) -> None:
    from ..crf import BACKENDS

    p.add_argument("--crf-backend", choices=BACKENDS, default="auto",
                   help="dense CRF implementation (wsss_fast.crf): 'wsss' (our operator, on the "
                        "command's device), 'pydensecrf' (a process pool) or 'auto' (wsss where "
                        "its compiled kernel exists, else pydensecrf when installed; default)")


def add_crf_stage_flags(p: argparse.ArgumentParser) -> None:
    """--crf-backend, --device and --workers of a command whose work is the CRF."""
    add_crf_backend_flag(p)
    add_device_flag(p, note="; where the wsss CRF backend runs")
    p.add_argument("--workers", type=int_at_least(1), default=None, metavar="N",
                   help="processes of the pydensecrf CRF backend (default: every core)")


def default_device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")
