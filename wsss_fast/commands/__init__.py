"""Command modules of the ``wsss-fast`` command line, one job each; see
:mod:`wsss_fast.cli` for how a module registers its commands."""
from __future__ import annotations

import argparse


def int_at_least(low: int):
    """argparse ``type=`` for an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def positive_float(text: str) -> float:
    """argparse ``type=`` for a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


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


def add_device_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--num-workers", type=int_at_least(0), default=None, metavar="N",
                   help="data-loading worker processes (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_crf_backend_flag(p: argparse.ArgumentParser) -> None:
    from ..crf import BACKENDS

    p.add_argument("--crf-backend", choices=BACKENDS, default="auto",
                   help="dense CRF implementation (wsss_fast.crf): 'wsss' (our operator, on the "
                        "command's device), 'pydensecrf' (a process pool) or 'auto' (wsss where "
                        "its compiled kernel exists, else pydensecrf when installed; default)")


def default_device(device: str | None) -> str:
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")
