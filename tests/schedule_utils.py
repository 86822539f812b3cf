"""What the shared Trainer hands the optimiser at every step, recorded on a
model of four one-element parameters (one per learning-rate group), for the
tests that compare schedules with the references' formulas."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import default_collate

from wsss_fast.training import GROUP_NAMES, EpochDataset, TrainConfig, Trainer


class FourGroups(nn.Module):
    """One parameter per group of wsss_fast.training.GROUP_NAMES."""

    def __init__(self):
        super().__init__()
        self.weights = nn.ParameterDict({name: nn.Parameter(torch.ones(1)) for name in GROUP_NAMES})

    def groups(self) -> dict[str, list[nn.Parameter]]:
        return {name: [p] for name, p in self.weights.items()}


def training_steps(cfg: TrainConfig, n_images: int, out: Path) -> list[dict]:
    """Trains FourGroups with ``cfg`` on ``n_images`` dummy items; returns,
    per step, ``batch`` (images in it), ``lr`` and ``weight_decay`` (group
    name -> value) and the optimiser's ``momentum`` and ``nesterov``."""
    model = FourGroups()
    steps: list[dict] = []
    trainer: list[Trainer] = []

    def loss_fn(module, batch):
        groups = trainer[0].optimizer.param_groups
        steps.append({"batch": len(batch["x"]), "lr": {g["name"]: g["lr"] for g in groups},
                      "weight_decay": {g["name"]: g["weight_decay"] for g in groups},
                      "momentum": groups[0].get("momentum"), "nesterov": groups[0].get("nesterov")})
        return sum(p.sum() for p in module.parameters()) * batch["x"].sum() * 0.0, {}

    trainer.append(Trainer(model, model.groups(), cfg, out, loss_fn, progress=False))
    data = EpochDataset([{"x": torch.ones(1)} for _ in range(n_images)], None, cfg.seed)
    trainer[0].fit(data, default_collate)
    return steps
