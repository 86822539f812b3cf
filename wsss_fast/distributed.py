"""Process-group facts for runs under ``torchrun`` (RANK, WORLD_SIZE and
LOCAL_RANK in the environment), and the sharding rule of inference stages.

Without torchrun every function answers as a single process (rank 0 of 1).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of processes (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Whether this process logs, checkpoints and summarises (rank 0)."""
    return rank() == 0


def local_device(device: "str | torch.device") -> "torch.device":
    """``device``, with "cuda" under torchrun meaning this process's GPU
    (cuda:LOCAL_RANK)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def join(device: "str | torch.device" = "cpu") -> None:
    """Joins the torchrun process group unless already in it: NCCL when
    ``device`` is a GPU (which becomes this process's current device), gloo
    otherwise. A no-op for a single process."""
    if world_size() == 1:
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    device = local_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")


def barrier() -> None:
    """Waits until every rank gets here; a no-op for a single process. Under
    torchrun it joins a gloo process group on first use (unless training
    joined one already, see :func:`join`). Inference stages list their
    pending images, then meet here before writing any output, so that every
    rank shards the same list."""
    if world_size() == 1:
        return
    import torch.distributed as dist

    join()
    dist.barrier()


def shard(items: Sequence[T], rank_: int | None = None, world: int | None = None) -> list[T]:
    """The items one rank processes: every ``world``-th, from index ``rank``.
    Inference stages shard the list of images that still lack outputs, so a
    re-run after a crash spreads only the missing ones over the ranks."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    if not 0 <= r < w:
        raise ValueError(f"shard: rank {r} outside world size {w}")
    return list(items[r::w])
