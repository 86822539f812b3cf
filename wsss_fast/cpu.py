"""How wsss-fast runs on CPUs: the cores this process may use and its torch
threads, OpenMP's waiting, the allocator, and bfloat16 inference.

The command line applies the process-wide parts first thing
(:func:`wsss_fast.cli.main`); library users call them themselves.

* **OpenMP waiting** (:func:`prepare_environment`, before torch is imported):
  torch's CPU wheel runs its parallel regions, MKL and oneDNN on GNU OpenMP
  (libgomp). Without ``OMP_WAIT_POLICY`` an idle libgomp thread spins
  (``GOMP_SPINCOUNT`` 300000 pauses, milliseconds) at every barrier before it
  sleeps. Beside another busy process that spinning takes the core from the
  thread the barrier is waiting for, and a run slows down many times over.
  ``OMP_WAIT_POLICY=PASSIVE`` makes waiting threads sleep at once. libgomp
  reads its environment when it is loaded, i.e. when torch is first
  imported, so this has to happen before that.
* **Threads** (:func:`configure_torch`): one torch thread per core this process
  may use (:func:`available_cores`: the CPU affinity mask and the cgroup's CPU
  quota, which torch's own default ignores), shared among the torchrun
  processes of this machine; ``OMP_NUM_THREADS`` given in the environment
  wins (torchrun sets it to 1 for each of several processes unless it is
  set). Decoding workers (DataLoader processes) run one torch thread each.
* **Allocator** (:func:`retain_freed_memory`): glibc hands every block above
  its mmap threshold (at most 32 MB, by default) back to the kernel when it is
  freed, so every large activation of a forward pass is a fresh mapping
  whose pages the kernel faults in and zeroes on first touch. A batched
  forward's activations are larger, so more of them cross the threshold:
  this is why the batched CAM engine was slower than a one-image loop on
  CPU (README "Pipeline throughput"). Raising the threshold and the trim
  threshold keeps freed memory in the process for the next forward.
* **bfloat16** (:func:`resolve_precision`, :func:`inference_context`):
  inference under bfloat16 autocast with channels_last tensors where the CPU
  computes bfloat16 natively (AVX512-BF16 or AMX-BF16, read from the CPU
  flags), float32 elsewhere; forced either way by the commands'
  ``--cpu-precision``.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
from pathlib import Path
from typing import Callable, Iterator, Mapping, MutableMapping

from .errors import UsageError

PRECISIONS = ("auto", "float32", "bfloat16")
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# glibc's mallopt parameters (malloc.h) and the largest value its int argument takes
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
RETAIN_BYTES = 2**31 - 1


def prepare_environment(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Sets what must be in the environment before torch (with libgomp) is
    loaded, where the user has not set it: ``OMP_WAIT_POLICY=PASSIVE`` unless
    the environment already says how OpenMP threads wait
    (``OMP_WAIT_POLICY``, libgomp's ``GOMP_SPINCOUNT`` or Intel OpenMP's
    ``KMP_BLOCKTIME``), and ``THP_MEM_ALLOC_ENABLE=1`` (torch then aligns
    its large CPU allocations to 2 MB and asks for transparent huge pages:
    one page fault per 2 MB instead of per 4 kB, and regular block sizes
    that glibc's heap reuses; see :func:`retain_freed_memory`). Returns what
    it set. Child processes inherit it."""
    environ = os.environ if environ is None else environ
    changes = {}
    if not any(name in environ for name in WAIT_VARIABLES):
        changes["OMP_WAIT_POLICY"] = "PASSIVE"
    if "THP_MEM_ALLOC_ENABLE" not in environ:
        changes["THP_MEM_ALLOC_ENABLE"] = "1"
    environ.update(changes)
    return changes


def cgroup_cpu_limit(proc_cgroup: str, root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPUs' worth of time the cgroup CPU quota allows this process
    (e.g. 1.5), or None without a quota.

    Args:
        proc_cgroup: the text of /proc/self/cgroup.
        root: where the cgroup file systems are mounted.

    Reads cgroup v2's ``cpu.max`` ("max 100000" or "150000 100000") and v1's
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1: none) of the process's
    cgroup and of every cgroup above it; the smallest quota counts.
    """
    limits = []
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            base = root if (root / "cgroup.controllers").exists() else root / "unified"
            limits += [_quota_v2(d) for d in _cgroup_dirs(base, path)]
        elif "cpu" in controllers.split(","):
            base = next((root / name for name in (controllers, "cpu", "cpu,cpuacct", "cpuacct,cpu")
                         if (root / name).is_dir()), None)
            if base is not None:
                limits += [_quota_v1(d) for d in _cgroup_dirs(base, path)]
    limits = [limit for limit in limits if limit is not None]
    return min(limits) if limits else None


def _cgroup_dirs(base: Path, path: str) -> list[Path]:
    """The cgroup's folder and those above it that exist under ``base`` (in a
    cgroup namespace /proc/self/cgroup says "/", the mount being the container's)."""
    parts = [p for p in path.strip().split("/") if p]
    dirs = [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]
    return [d for d in dirs if d.is_dir()]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _quota_v2(folder: Path) -> float | None:
    text = _read(folder / "cpu.max")
    if not text:
        return None
    quota, _, period = text.partition(" ")
    if quota == "max" or not period:
        return None
    return int(quota) / int(period)


def _quota_v1(folder: Path) -> float | None:
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    if not quota or not period or int(quota) <= 0:
        return None
    return int(quota) / int(period)


def available_cores(affinity: set[int] | None = None, cgroup_limit: float | None = None) -> int:
    """The cores this process may use: the CPUs of its affinity mask
    (``os.sched_getaffinity``; all CPUs where the platform has none), fewer
    when the cgroup's CPU quota allows less (rounded up), at least 1.

    Args:
        affinity: the CPU set (default: this process's).
        cgroup_limit: CPUs' worth of quota (default: read from
            /proc/self/cgroup, see :func:`cgroup_cpu_limit`).
    """
    if affinity is None:
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores = len(affinity)
    if cgroup_limit is None:
        text = _read(Path("/proc/self/cgroup"))
        cgroup_limit = cgroup_cpu_limit(text) if text else None
    if cgroup_limit is not None:
        cores = min(cores, math.ceil(cgroup_limit))
    return max(1, cores)


def compute_threads(environ: Mapping[str, str] | None = None, cores: int | None = None) -> int:
    """torch threads of this process: ``OMP_NUM_THREADS`` when the
    environment gives it, else the available cores (:func:`available_cores`)
    divided among the torchrun processes of this machine
    (``LOCAL_WORLD_SIZE``), at least 1."""
    environ = os.environ if environ is None else environ
    given = environ.get("OMP_NUM_THREADS", "").strip()
    if given:
        try:
            threads = int(given.split(",")[0])
        except ValueError:
            raise UsageError(f"OMP_NUM_THREADS must be a positive integer, got {given!r}") from None
        if threads < 1:
            raise UsageError(f"OMP_NUM_THREADS must be a positive integer, got {given!r}")
        return threads
    cores = available_cores() if cores is None else cores
    return max(1, cores // max(1, int(environ.get("LOCAL_WORLD_SIZE", "1"))))


def retain_freed_memory() -> bool:
    """Makes glibc keep freed memory for reuse instead of returning blocks
    above 32 MB to the kernel (mmap and trim thresholds raised to 2 GiB), so
    that a forward pass reuses the pages of the previous one instead of
    faulting in fresh zeroed pages. False (nothing done) where the C library
    is not glibc."""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(RETAIN_BYTES))
                and libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(RETAIN_BYTES)))


def configure_torch(environ: Mapping[str, str] | None = None) -> dict:
    """The process-wide settings after torch is loaded: torch threads
    (:func:`compute_threads`) and the allocator (:func:`retain_freed_memory`).
    Returns them, with whether OpenMP was loaded waiting passively."""
    import torch

    environ = os.environ if environ is None else environ
    threads = compute_threads(environ)
    torch.set_num_threads(threads)
    return {"threads": threads, "retain_freed_memory": retain_freed_memory(),
            "omp_wait_policy": environ.get("OMP_WAIT_POLICY", "")}


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags: the ``flags`` (x86) or ``Features`` (Arm)
    line of /proc/cpuinfo, or of ``cpuinfo`` when given. Where /proc/cpuinfo
    cannot be read, the bfloat16 flags that torch's own CPU detection reports."""
    if cpuinfo is None:
        cpuinfo = _read(Path("/proc/cpuinfo"))
        if cpuinfo is None:
            import torch

            return frozenset(name for name, present in (
                ("avx512_bf16", torch.cpu._is_avx512_bf16_supported()),
                ("amx_bf16", torch.cpu._is_amx_tile_supported())) if present)
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16)."""
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def resolve_precision(choice: str, device_type: str = "cpu", flags: frozenset[str] | None = None) -> str:
    """The inference precision a ``--cpu-precision`` choice means here:
    "bfloat16" or "float32". ``auto`` is bfloat16 on a CPU with native
    bfloat16 (:func:`native_bf16`) and float32 elsewhere; on CUDA the CPU
    precision does not apply (float32; ``--amp`` is CUDA's float16)."""
    if choice not in PRECISIONS:
        raise UsageError(f"CPU precision must be one of {', '.join(PRECISIONS)}, got {choice!r}")
    if device_type != "cpu":
        return "float32"
    if choice == "auto":
        return "bfloat16" if native_bf16(flags) else "float32"
    return choice


def prepare_model(model, precision: str):
    """The model as CPU inference runs it: channels_last weights for bfloat16
    (oneDNN's bfloat16 convolutions work on NHWC), unchanged for float32."""
    import torch

    if precision == "bfloat16":
        return model.to(memory_format=torch.channels_last)
    return model


@contextlib.contextmanager
def inference_context(precision: str, device_type: str = "cpu") -> Iterator[Callable]:
    """bfloat16 autocast around CPU inference for ``precision`` "bfloat16"
    (nothing for float32). Yields the function that lays an input out as the
    model expects it (channels_last under bfloat16, as it is otherwise)."""
    import torch

    if precision == "bfloat16" and device_type == "cpu":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield lambda x: x.contiguous(memory_format=torch.channels_last)
    else:
        yield lambda x: x
