"""Loading pretrained weights from files the user supplies, with a report of
what matched. Nothing is ever downloaded."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping, NamedTuple

import torch
from torch import nn

from ..errors import WsssFastError


class WeightsError(WsssFastError):
    """A weights file is missing, unreadable, or does not fit the model."""


class LoadReport(NamedTuple):
    """Keys of the model left at their initial values (``missing``) and keys
    of the file the model does not have (``unexpected``), by name."""
    missing: list[str]
    unexpected: list[str]

    def summary(self) -> str:
        def some(keys):
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
        parts = []
        if self.missing:
            parts.append(f"missing: {some(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected: {some(self.unexpected)}")
        return "; ".join(parts) or "all keys matched"


def read_weights_file(path: str | os.PathLike):
    """The object of a ``.pth`` file, loaded with ``torch.load(weights_only=
    True)`` (:func:`wsss_fast.training.read_torch_file`): tensors, containers
    and plain values only; a pickle that would import anything else is
    refused, never executed. Raises WeightsError in one line naming the file."""
    from ..errors import UsageError
    from ..training import read_torch_file

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        return read_torch_file(path, "weights file")
    except UsageError as exc:
        raise WeightsError(str(exc)) from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``.pth`` file: a state dict, or a checkpoint dict
    holding one under ``state_dict`` or ``model``. Raises WeightsError
    naming the file when it is missing or not such a file."""
    return state_dict_of(read_weights_file(path), path)


def state_dict_of(obj, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in the object ``read_weights_file(path)`` returned
    (see :func:`read_state_dict`), ``module.`` prefixes stripped."""
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def load_weights(model: nn.Module, source: str | os.PathLike | Mapping[str, torch.Tensor], *,
                 key_map: Callable[[str], str | None] | None = None,
                 required: Callable[[str], bool] = lambda key: True,
                 what: str = "model", origin: str | None = None) -> LoadReport:
    """Copies matching tensors from ``source`` (a file or a state dict) into
    ``model``.

    Args:
        key_map: renames each file key to the model's key, or returns None to
            drop it (e.g. a classifier head of another task).
        required: model keys that must be in the file; if any is missing, or
            a shared key has another shape, this raises WeightsError naming
            them: the file is the wrong one. Other missing keys are reported.
        what: the model's name in messages.
        origin: where a state dict ``source`` came from, for messages
            (default "weights file <source>" for a file, else "state dict").

    Returns:
        :class:`LoadReport` of missing and unexpected keys (after key_map).
    """
    if origin is None:
        origin = f"weights file {source}" if isinstance(source, (str, os.PathLike)) else "state dict"
    state = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else dict(source)
    if key_map is not None:
        mapped = {}
        for key, value in state.items():
            new = key_map(key)
            if new is not None:
                mapped[new] = value
        state = mapped
    own = model.state_dict()
    bad_shapes = [f"{k} (file {tuple(state[k].shape)}, {what} {tuple(v.shape)})"
                  for k, v in own.items() if k in state and state[k].shape != v.shape]
    if bad_shapes:
        raise WeightsError(f"{origin} does not fit the {what}: shapes differ for "
                           + ", ".join(bad_shapes[:5]) + (" ..." if len(bad_shapes) > 5 else ""))
    # BatchNorm's batch counters are bookkeeping, not weights: files from old
    # PyTorch versions and converted files lack them and miss nothing.
    missing = [k for k in own if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    absent_required = [k for k in missing if required(k)]
    if absent_required:
        report = LoadReport(absent_required, unexpected)
        raise WeightsError(f"{origin} is not a {what} checkpoint: {report.summary()}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return LoadReport(missing, unexpected)


def load_backbone_weights(backbone: nn.Module, source: str | os.PathLike | Mapping[str, torch.Tensor], *,
                          what: str = "backbone", origin: str | None = None) -> LoadReport:
    """Loads pretrained weights into a backbone (see :func:`load_weights`):
    every parameter and buffer the backbone does not call new (``is_new``)
    must be in the file. The report is also kept as ``backbone.load_report``
    for commands to show."""
    report = load_weights(backbone, source, what=what, origin=origin,
                          required=lambda key: not backbone.is_new(key))
    backbone.load_report = report
    return report
