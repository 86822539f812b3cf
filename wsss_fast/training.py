"""The training loop every stage shares: optimiser and schedule of the
references, checkpoints every epoch, exact resume, a JSON-lines log,
progress bars, AMP on CUDA.

Determinism: the order of an epoch and every augmentation are functions of
(seed, epoch, index) (see :class:`EpochDataset`), and torch's RNG is reseeded
from (seed, epoch) at the start of each epoch, so training that is stopped and
resumed from its last checkpoint ends with the same weights as training that
ran straight through (on CPU; CUDA kernels may be non-deterministic).

Under torchrun (WORLD_SIZE > 1) every rank joins the process group (NCCL on
GPUs, gloo on CPU; see :func:`wsss_fast.distributed.join`), the model is
wrapped in DistributedDataParallel, and each epoch's order is dealt
round-robin to the ranks (:func:`epoch_order`). Each rank takes
``batch_size // world`` images per step, so the effective batch (and hence
the learning rate) stays the configured one. On GPUs, BatchNorm layers
become SyncBatchNorm, so their statistics cover the whole batch as in one
process; gloo has no SyncBatchNorm, so on CPU each rank normalises with its
own images' statistics. Rank 0 alone writes checkpoint.pt, final.pt and
log.jsonl (epoch means averaged over the ranks) and prints; every rank
resumes from the same checkpoint.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from . import distributed
from .errors import UsageError
from .storage import atomic_output

CHECKPOINT = "checkpoint.pt"  # latest finished epoch: model, optimiser, epoch
FINAL = "final.pt"            # weights after the last epoch, with the stage's metadata
LOG = "log.jsonl"             # one JSON object per logged step and per epoch (and TensorBoard
                              # scalars in tensorboard/ when the package is installed)
GROUP_NAMES = ("pretrained_weight", "pretrained_bias", "new_weight", "new_bias")


@dataclass
class TrainConfig:
    """Optimisation settings; each stage's defaults follow its reference.

    lr_mult: learning-rate multipliers of the four parameter groups
        (pretrained weight, pretrained bias, new weight, new bias).
    bias_decay: weight decay on the biases too (DRS's train_cls.py and IRN's
        PolyOptimizer give SGD one weight_decay for every group); False keeps
        biases free of it, as PSA, SC-CAM and DeepLab do.
    schedule: "poly" (lr x (1 - step / steps) ** poly_power) or "step" (lr x
        gamma at each epoch of ``milestones``, 0-based).
    poly_every: the poly factor is recomputed every ``poly_every`` steps only
        (deeplab-pytorch's PolynomialLR with step_size 10: lr x (1 - s' /
        steps) ** power, s' = step rounded down to a multiple of it).
    stop_epoch: train only the first ``stop_epoch`` of the ``epochs`` the
        schedule spans (SC-CAM keeps the checkpoint of epoch 30, 40 or 50 of
        a 61-epoch poly schedule); None trains all of them.
    max_steps: the schedule spans, and training stops after, this many steps
        (deeplab-pytorch's ITER_MAX), ``epochs`` being enough whole epochs to
        hold them; None: every step of ``epochs`` epochs.
    drop_last: drop each epoch's last partial batch (PSA, SC-CAM); False
        trains on it too (DRS's DataLoader keeps it).
    channels_last: keep the network's 4-D weights and each batch's 4-D
        floating-point tensors in channels-last memory order (the same
        values; PyTorch's CPU kernels for depthwise convolutions are faster
        in it: a train-seg step of the demo's DeepLab takes 0.32 s instead of
        0.50 s on 2 cores of an AMD EPYC); False: PyTorch's default order.
    """
    epochs: int = 15
    batch_size: int = 8
    lr: float = 0.01
    weight_decay: float = 5e-4
    optimizer: str = "sgd"          # "sgd" or "adam"
    momentum: float = 0.9
    nesterov: bool = False
    lr_mult: tuple[float, float, float, float] = (1.0, 2.0, 10.0, 20.0)
    bias_decay: bool = False
    schedule: str = "poly"          # "poly" or "step"
    poly_power: float = 0.9
    poly_every: int = 1
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    stop_epoch: int | None = None
    max_steps: int | None = None
    drop_last: bool = True
    channels_last: bool = False
    seed: int = 0
    num_workers: int = 2
    amp: bool = True                # mixed precision, on CUDA only
    log_every: int = 20             # steps between log lines
    extra: dict = field(default_factory=dict)  # stage-specific settings, recorded in the log

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise UsageError(f"epochs and batch size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"lr must be a positive number, got {self.lr}")
        if self.optimizer not in ("sgd", "adam"):
            raise UsageError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.schedule not in ("poly", "step"):
            raise UsageError(f"schedule must be 'poly' or 'step', got {self.schedule!r}")
        if self.poly_every < 1:
            raise UsageError(f"poly_every must be >= 1, got {self.poly_every}")
        if self.stop_epoch is not None and not 1 <= self.stop_epoch <= self.epochs:
            raise UsageError(f"stop epoch {self.stop_epoch} must lie in 1..{self.epochs} (the schedule's epochs)")
        if self.max_steps is not None and self.max_steps < 1:
            raise UsageError(f"max_steps must be >= 1, got {self.max_steps}")


def build_optimizer(groups: dict[str, list[nn.Parameter]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser over the four parameter groups (empty groups dropped)."""
    param_groups = []
    for name, mult in zip(GROUP_NAMES, cfg.lr_mult):
        if groups.get(name):
            wd = 0.0 if name.endswith("bias") and not cfg.bias_decay else cfg.weight_decay
            param_groups.append({"params": groups[name], "lr": cfg.lr * mult, "initial_lr": cfg.lr * mult,
                                 "weight_decay": wd, "name": name})
    if not param_groups:
        raise UsageError("nothing to train: the model has no trainable parameters")
    if cfg.optimizer == "adam":
        return torch.optim.Adam(param_groups, lr=cfg.lr)
    return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def lr_factor(cfg: TrainConfig, epoch: int, step: int, total_steps: int) -> float:
    """Multiplier of the initial learning rates at global ``step`` (from 0)
    of ``total_steps`` (``epoch`` counts from 0)."""
    if cfg.schedule == "poly":
        return (1.0 - step // cfg.poly_every * cfg.poly_every / total_steps) ** cfg.poly_power
    return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)


class EpochDataset(Dataset):
    """Wraps a dataset of item dicts with an augmentation ``augment(item,
    rng)`` whose generator is seeded by (seed, epoch, index); call
    :meth:`set_epoch` before each epoch. Items that are None (skipped corrupt
    images) stay None."""

    def __init__(self, dataset: Dataset, augment: Callable | None, seed: int):
        self.dataset = dataset
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        if item is None or self.augment is None:
            return item
        return self.augment(item, np.random.default_rng([self.seed, self.epoch, index]))


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[int]:
    """The shuffled indices one process visits in an epoch: a permutation of
    range(n) from (seed, epoch), cut to a multiple of ``world`` and dealt
    round-robin to the ranks."""
    perm = np.random.default_rng([seed, epoch, 1 << 20]).permutation(n)
    usable = n - n % world
    return perm[rank:usable:world].tolist()


LossFn = Callable[[nn.Module, dict], tuple[torch.Tensor, dict[str, float]]]


class Trainer:
    """Runs ``cfg.epochs`` epochs of ``loss_fn`` over a dataset.

    Args:
        model: the network (moved to ``device``).
        groups: its four parameter groups (see
            :func:`wsss_fast.models.param_groups`).
        cfg: :class:`TrainConfig`.
        out_dir: where checkpoint.pt, final.pt and log.jsonl go.
        loss_fn: ``loss_fn(model, batch) -> (loss, metrics)`` with the batch
            already on the device.
        metadata: stored in final.pt beside the weights (what later stages
            need to rebuild the model: backbone name, options, classes ...).
        device: torch device; "cuda" under torchrun means this rank's GPU.
        progress: show progress bars (rank 0 only).
    """

    def __init__(self, model: nn.Module, groups: dict[str, list[nn.Parameter]], cfg: TrainConfig,
                 out_dir: str | os.PathLike, loss_fn: LossFn, *, metadata: dict | None = None,
                 device: str | torch.device = "cpu", progress: bool = True, desc: str = "train"):
        cfg.check()
        self.rank, self.world = distributed.rank(), distributed.world_size()
        if cfg.batch_size < self.world:
            raise UsageError(f"batch size {cfg.batch_size} is smaller than the {self.world} torchrun processes; "
                             "each needs at least one image per step")
        self.device = distributed.local_device(device)
        self.module = model.to(self.device)  # the network itself: its state dict is what gets saved
        if cfg.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self.model = self.module             # what loss_fn gets: the DDP wrapper under torchrun
        if self.world > 1:
            distributed.join(self.device)
            if self.device.type == "cuda":
                self.module = nn.SyncBatchNorm.convert_sync_batchnorm(self.module)
            self.model = nn.parallel.DistributedDataParallel(
                self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.loss_fn = loss_fn
        self.metadata = dict(metadata or {})
        self.main = self.rank == 0
        self.progress = progress and self.main
        self.desc = desc
        self.optimizer = build_optimizer(groups, cfg)
        self.amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

    # -- state ---------------------------------------------------------------
    def _to_device(self, value):
        """A batch entry on the device; with ``channels_last``, 4-D
        floating-point tensors in that memory order."""
        if not isinstance(value, torch.Tensor):
            return value
        value = value.to(self.device, non_blocking=True)
        if self.cfg.channels_last and value.dim() == 4 and value.is_floating_point():
            value = value.contiguous(memory_format=torch.channels_last)
        return value

    def _save_checkpoint(self, epoch: int) -> None:
        state = {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict(), "epoch": epoch, "config": asdict(self.cfg)}
        with atomic_output(self.out_dir / CHECKPOINT) as tmp:
            torch.save(state, tmp)

    def _load_checkpoint(self) -> int:
        """Restores the last checkpoint; returns the number of finished
        epochs. A checkpoint of another network or made with other
        optimisation settings is refused with a UsageError naming the file."""
        path = self.out_dir / CHECKPOINT
        if not path.is_file():
            return 0
        state = read_torch_file(path, "training checkpoint", map_location=self.device)
        if not isinstance(state, dict) or not {"model", "optimizer", "scaler", "epoch"} <= set(state):
            raise UsageError(f"{path} is not a wsss-fast training checkpoint")
        changed = settings_changes(state.get("config") or {}, asdict(self.cfg))
        if changed:
            raise UsageError(f"{path} was made with other training settings ({changed}); resume with "
                             f"the same settings, or start over in another output folder")
        try:
            self.module.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            detail = " ".join(str(exc).split())
            raise UsageError(f"{path} holds another network than this run trains ({detail[:200]}); "
                             "start over in another output folder") from None
        self.scaler.load_state_dict(state["scaler"])
        return int(state["epoch"]) + 1

    def _log(self, record: dict) -> None:
        """Appends ``record`` to log.jsonl and, with TensorBoard installed, its
        numbers of step and epoch records to ``out_dir/tensorboard``."""
        if not self.main:
            return
        with open(self.out_dir / LOG, "a") as f:
            f.write(json.dumps(record) + "\n")
        writer = self._tensorboard()
        if writer is not None and record["event"] in ("step", "epoch"):
            x = record.get("step", record["epoch"])
            for key, value in record.items():
                if key not in ("event", "epoch", "step") and isinstance(value, (int, float)):
                    writer.add_scalar(f"{record['event']}/{key}", value, x)
            writer.flush()

    def _tensorboard(self):
        """A SummaryWriter when the tensorboard package is installed, else None."""
        if not hasattr(self, "_writer"):
            self._writer = None
            if importlib.util.find_spec("tensorboard") is not None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.out_dir / "tensorboard"))
        return self._writer

    # -- loop ----------------------------------------------------------------
    def fit(self, dataset: EpochDataset, collate: Callable, *, resume: bool = False) -> Path:
        """Trains, resuming from checkpoint.pt when ``resume``; returns the
        path of final.pt. Without ``resume``, an existing checkpoint in
        out_dir is an error (so a run is never silently overwritten)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        final = self.out_dir / FINAL
        if not resume and ((self.out_dir / CHECKPOINT).exists() or final.exists()):
            raise UsageError(f"{self.out_dir} already holds a training run; pass --resume to continue "
                             "it or choose another output folder")
        if resume and final.exists():
            return final
        start = self._load_checkpoint() if resume else 0
        if len(dataset) < 1:
            raise UsageError("the training set is empty")
        per_rank = len(dataset) // self.world
        if per_rank < 1:
            raise UsageError(f"the training set has {len(dataset)} images, fewer than the {self.world} processes")
        batch_size = min(self.cfg.batch_size // self.world, per_rank)  # per process
        steps_per_epoch = per_rank // batch_size if self.cfg.drop_last else -(-per_rank // batch_size)
        total = steps_per_epoch * self.cfg.epochs
        if self.cfg.max_steps is not None:
            if self.cfg.max_steps > total:
                raise UsageError(f"{self.cfg.max_steps} steps do not fit in {self.cfg.epochs} epochs of "
                                 f"{steps_per_epoch} steps")
            total = self.cfg.max_steps
        last_epoch = self.cfg.stop_epoch or min(self.cfg.epochs, -(-total // steps_per_epoch))
        if start == 0:
            self._log({"event": "start", "config": asdict(self.cfg), "metadata": self.metadata,
                       "images": len(dataset), "steps_per_epoch": steps_per_epoch, "processes": self.world,
                       "batch_per_process": batch_size})
        for epoch in range(start, last_epoch):
            torch.manual_seed(self.cfg.seed * 1_000_003 + epoch)
            dataset.set_epoch(epoch)
            order = epoch_order(len(dataset), self.cfg.seed, epoch, self.rank, self.world)
            steps = min(steps_per_epoch, total - epoch * steps_per_epoch)
            batches = [order[i:i + batch_size] for i in range(0, steps * batch_size, batch_size)]
            loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate,
                                num_workers=self.cfg.num_workers,
                                pin_memory=self.device.type == "cuda")
            self._run_epoch(loader, epoch, steps_per_epoch, total, last_epoch)
            if self.main:
                self._save_checkpoint(epoch)
        if self.main:
            payload = {"model": self.module.state_dict(), "metadata": self.metadata, "config": asdict(self.cfg)}
            with atomic_output(final) as tmp:
                torch.save(payload, tmp)
        self._log({"event": "done", "epochs": last_epoch})
        distributed.barrier()  # final.pt exists before any rank returns it
        return final

    def _all_have(self, batch: dict | None) -> bool:
        """Whether every rank has a batch this step (a rank whose images were
        all skipped corrupt ones has none; then all skip the step, since DDP
        needs every rank in each backward)."""
        if self.world == 1:
            return batch is not None
        flag = torch.tensor([float(batch is not None)], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item())

    def _mean_over_ranks(self, means: dict[str, float]) -> dict[str, float]:
        if self.world == 1:
            return means
        keys = list(means)  # the same order on every rank: the same loss_fn made them
        values = torch.tensor([means[k] for k in keys], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(values)
        return dict(zip(keys, (values / self.world).tolist()))

    def _run_epoch(self, loader: DataLoader, epoch: int, steps_per_epoch: int, total: int,
                   last_epoch: int) -> None:
        self.model.train()
        sums: dict[str, float] = {}
        seen = 0
        start = time.perf_counter()
        bar = tqdm(loader, total=len(loader), desc=f"{self.desc} epoch {epoch + 1}/{last_epoch}",
                   disable=not self.progress, leave=False)
        for i, batch in enumerate(bar):
            if not self._all_have(batch):  # every image of a batch was a skipped corrupt one
                continue
            step = epoch * steps_per_epoch + i
            factor = lr_factor(self.cfg, epoch, step, total)
            for group in self.optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
            batch = {k: self._to_device(v) for k, v in batch.items()}
            with torch.autocast(self.device.type, enabled=self.amp):
                loss, metrics = self.loss_fn(self.model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{self.desc}: loss is {loss.item()} at epoch {epoch + 1} step {i}; "
                                         "lower the learning rate")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            metrics = {"loss": loss.item(), **metrics}
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            seen += 1
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            if (i + 1) % self.cfg.log_every == 0:
                self._log({"event": "step", "epoch": epoch, "step": step, "lr": self.cfg.lr * factor,
                           **metrics})
        bar.close()
        means = self._mean_over_ranks({k: v / max(seen, 1) for k, v in sums.items()})
        self._log({"event": "epoch", "epoch": epoch, "seconds": time.perf_counter() - start, **means})
        if self.progress:
            print(f"{self.desc} epoch {epoch + 1}/{last_epoch}: "
                  + " ".join(f"{k} {v:.4f}" for k, v in means.items()))


# TrainConfig fields that change how a run is executed, not what it computes.
RUNTIME_FIELDS = ("num_workers", "log_every")


def settings_changes(before: dict, now: dict, ignore: tuple[str, ...] = RUNTIME_FIELDS) -> str:
    """"key: old -> new" for the first few settings that differ ("" when
    none), comparing JSON-like values (tuples and lists alike)."""
    def plain(value):
        return json.loads(json.dumps(value, default=str))

    keys = [k for k in sorted(set(before) | set(now))
            if k not in ignore and plain(before.get(k)) != plain(now.get(k))]
    return ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in keys[:3]) + (
        f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def read_torch_file(path: Path, what: str, map_location="cpu"):
    """``torch.load(path, weights_only=True)``: tensors, containers and plain
    values only, so a crafted file cannot run code. Raises UsageError in one
    line naming the file when it is unreadable, truncated, or needs anything
    else to unpickle."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        message = " ".join(str(exc).split())
        if "Weights only load failed" in message or isinstance(exc, pickle.UnpicklingError):
            found = (message.split("Unsupported global: ")[-1].split(" was not")[0].removeprefix("GLOBAL ")[:120]
                     if "Unsupported global" in message else "objects other than tensors and plain values")
            raise UsageError(f"refusing to load {what} {path}: it needs {found}, which could run "
                             "code; wsss-fast files hold tensors and plain values only") from None
        raise UsageError(f"cannot read {what} {path}: {type(exc).__name__}: {message[:200]}") from None


def load_final(path: str | os.PathLike) -> dict:
    """Reads a final.pt (``model`` state dict, ``metadata``, ``config``);
    raises UsageError naming the file when it is missing, not one, or
    needs code to unpickle (see :func:`read_torch_file`)."""
    path = Path(path)
    if path.is_dir():
        path = path / FINAL
    if not path.is_file():
        raise UsageError(f"no trained model at {path} (train it first)")
    payload = read_torch_file(path, "trained model")
    if not isinstance(payload, dict) or "model" not in payload or "metadata" not in payload:
        raise UsageError(f"{path} is not a wsss-fast trained model (final.pt)")
    return payload
