"""ordered_map keeps input order and pulls at most `ahead` items early; the
CRF's worker processes end with a parent killed by SIGKILL."""
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from wsss_fast.parallel import ordered_map


def test_order_and_bounded_lookahead():
    pulled = []

    def items():
        for i in range(20):
            pulled.append(i)
            yield i

    with ThreadPoolExecutor(4) as pool:
        out = ordered_map(pool, lambda x: x * x, items(), ahead=3)
        first = next(out)
        assert first == 0 and len(pulled) == 3
        assert [first, *out] == [i * i for i in range(20)]
    with pytest.raises(ValueError):
        next(ordered_map(pool, abs, [1], ahead=0))


CRF_FOREVER = """
import numpy as np
from wsss_fast.crf import CRFParams, imap_dense_crf
params = CRFParams(iterations=100000, gaussian_sxy=3, gaussian_compat=3, bilateral_sxy=80,
                   bilateral_srgb=13, bilateral_compat=10)
rng = np.random.default_rng(0)
pairs = [(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), rng.random((3, 64, 64), dtype=np.float32))
         for _ in range(4)]
print("started", flush=True)
for _ in imap_dense_crf(pairs, params, backend="pydensecrf", workers=2, progress=False):
    pass
"""


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_crf_workers_die_with_a_killed_parent():
    pytest.importorskip("pydensecrf")
    parent = subprocess.Popen([sys.executable, "-c", CRF_FOREVER], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 60
        while len(_children(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = _children(parent.pid)
        assert len(workers) >= 2, workers
    finally:
        parent.kill()  # SIGKILL: no cleanup runs in the parent
        parent.wait()
    deadline = time.monotonic() + 10
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = [pid for pid in workers if _alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, "CRF workers outlived their killed parent"
