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
