"""Shared timing, environment and results-file helpers of the benchmarks.

Every benchmark measures its contenders in one run, on one device, and writes
one JSON file under benchmarks/results/ named ``<bench>-<device tag>.json`` with
the environment (device, torch, commit, threads) and every timing, so that the
README's numbers can be traced to a file.
"""
from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: torch.device | str = "cpu", *,
            warmup: int = 2, reps: int = 10, min_seconds: float = 0.0) -> dict:
    """Times ``fn``: median, min and spread over ``reps`` runs after ``warmup``.

    On CUDA each run is timed with events; on CPU with perf_counter. Keeps
    repeating past ``reps`` until ``min_seconds`` have been spent. Returns a dict
    with ``median_ms``, ``min_ms``, ``max_ms`` and ``reps``.
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < reps or time.perf_counter() - start_all < min_seconds:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
            "reps": len(times)}


def peak_memory(fn: Callable[[], object], device: torch.device | str = "cpu") -> int | None:
    """Peak bytes allocated on a CUDA device while ``fn`` runs (None on CPU;
    CPU peaks are measured by the benchmarks that need them, in a subprocess)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def _rss(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1)) * 1024


class PeakMemory:
    """Peak memory growth of this process while the block runs, in ``peak``
    (bytes). CPU: the resident set's high-water mark (VmHWM, reset to VmRSS
    through /proc/self/clear_refs on entry) minus the resident set on entry;
    small allocations can reuse resident heap pages, so peaks of a few MiB are
    lower bounds. CUDA: torch.cuda.max_memory_allocated growth."""

    def __init__(self, device):
        self.device = torch.device(device)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to VmRSS
            self.base = _rss("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.peak = _rss("VmHWM") - self.base


def timed(fn: Callable[[], object], device: torch.device | str) -> tuple[object, float]:
    """(fn(), milliseconds it took), synchronising CUDA around it."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, (time.perf_counter() - t0) * 1e3


def run_child(script: str | os.PathLike, spec: dict) -> dict:
    """Runs ``python script --child JSON(spec)`` in a fresh process and returns
    the JSON object its last stdout line holds (a fresh process per
    measurement, so that peak memory is the measured call's own)."""
    proc = subprocess.run([sys.executable, str(script), "--child", json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {spec} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parent).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment(device: torch.device | str) -> dict:
    """Device name, torch/CUDA versions, commit, CPU threads and wsss_fast backend."""
    import wsss_fast

    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_name()
    return {"device": name, "device_type": device.type, "torch": torch.__version__,
            "cuda": torch.version.cuda, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "commit": git_commit(), "backend": wsss_fast.backend_info(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "CPU: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU: " + (platform.processor() or platform.machine())


def device_tag(device: torch.device | str) -> str:
    """"cpu" or "cuda": the results file's suffix (environment() names the GPU or CPU)."""
    return torch.device(device).type


def write_results(bench: str, device: torch.device | str, records: list[dict], **extra) -> Path:
    """Writes ``{"bench", "environment", "records", **extra}`` to
    results/<bench>-<cpu|cuda>.json atomically; returns the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{bench}-{device_tag(device)}.json"
    payload = {"bench": bench, "environment": environment(device), "records": records, **extra}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Prints rows as an aligned text table; floats with 3 significant digits."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
              for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
