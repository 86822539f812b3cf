"""Launching ``python -m wsss_fast`` under torchrun from the tests: CPU
processes on this machine, gloo, a free rendezvous port (``--standalone``)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def torchrun_argv(*args, nproc: int = 2) -> list[str]:
    """The command line of ``torchrun --standalone --nproc_per_node nproc -m wsss_fast args``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "wsss_fast", *map(str, args)]


def torchrun(*args, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs the command to its end; returns it with its output as text."""
    return subprocess.run(torchrun_argv(*args, nproc=nproc), capture_output=True, text=True, cwd=os.getcwd(),
                          timeout=timeout)


def child_pids(pid: int) -> list[int]:
    """The processes ``pid`` started (for the launcher: its ranks), from Linux's /proc."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []
