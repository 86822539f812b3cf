"""Order-preserving parallel map with a bounded number of items in flight,
and worker processes that end with the process that started them."""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(pool: Executor, fn: Callable[[T], R], items: Iterable[T], ahead: int) -> Iterator[R]:
    """``fn(item)`` for each item, in input order, computed by ``pool``.

    ``items`` is consumed lazily and at most ``ahead`` items are submitted
    but not yet yielded, so memory stays bounded however long the input is
    (``Executor.map`` would submit everything at once).
    """
    if ahead < 1:
        raise ValueError(f"ahead must be >= 1, got {ahead}")
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _exit_when_orphaned(parent: int, period: float) -> None:
    while os.getppid() == parent:
        time.sleep(period)
    os._exit(1)  # the parent died (e.g. kill -9): nobody will read our results


def die_with_parent(parent: int, period: float = 0.5) -> None:
    """Process-pool initializer: the worker ends when its parent dies, which
    a pool's own machinery does not notice when the parent is killed with
    SIGKILL. On Linux the kernel sends SIGKILL (``PR_SET_PDEATHSIG``; it
    works even while the worker is inside a C extension holding the GIL,
    and fires when the parent thread that started the pool ends, so a pool
    must be used from the thread that created it); elsewhere a daemon thread
    polls the parent every ``period`` seconds."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent:  # died before the call
                os._exit(1)
            return
    threading.Thread(target=_exit_when_orphaned, args=(parent, period), daemon=True,
                     name="wsss-fast-parent-watch").start()


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool of ``workers`` whose processes die with this one
    (:func:`die_with_parent`)."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(),
                               initializer=die_with_parent, initargs=(os.getpid(),))
