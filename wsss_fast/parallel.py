"""Order-preserving parallel map with a bounded number of items in flight."""
from __future__ import annotations

from collections import deque
from concurrent.futures import Executor
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
