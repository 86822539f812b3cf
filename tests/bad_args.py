"""Helpers of the bad-input tables of the operator tests: keyword arguments
with some of them changed, and tensors with one value replaced."""
from __future__ import annotations

import torch


def changed(args: dict, change: dict) -> dict:
    """``args`` with each key of ``change`` replaced by its value, or by
    value(args) when the value is callable (a function of the good arguments)."""
    args = dict(args)
    for key, value in change.items():
        args[key] = value(args) if callable(value) else value
    return args


def with_value(t: torch.Tensor, index, value) -> torch.Tensor:
    """A copy of ``t`` with ``t[index] = value``."""
    t = t.clone()
    t[index] = value
    return t
