"""The CUDA DRS launch configuration (csrc/cuda/drs_launch.h) on the CPU: which
path a plane takes, its shared memory, whether the kernel must opt in to more
than 48 KiB, and the grid, at the shapes of issue 15. The header is plain C++;
tests/cpp/drs_launch_probe.cpp prints its decisions and is compiled here with
the host compiler (no GPU, no CUDA).

Device limits (bytes): 48 KiB without opting in on every GPU since sm_70;
opt-in 163 KiB on sm_80 and 227 KiB on sm_90. Static shared memory of the plane
kernels: 128 B forward, 256 B backward (their reduction scratch; nvcc -Xptxas -v).
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = ROOT / "tests" / "cpp" / "drs_launch_probe.cpp"

DEFAULT = 48 * 1024
SM80 = (DEFAULT, 163 * 1024)
SM90 = (DEFAULT, 227 * 1024)
FWD, BWD = 128, 256  # static shared memory of the forward / backward plane kernel
FP32, HALF = 4, 2
MAX_GRID_X = 2**31 - 1


class Launch(NamedTuple):
    path: str
    threads: int
    dynamic_smem: int
    needs_optin: bool
    chunks: int
    chunk_len: int
    planes_per_launch: int
    max_plane_size: int


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    exe = tmp_path_factory.mktemp("probe") / "drs_launch_probe"
    subprocess.run([cxx, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror",
                    f"-I{ROOT / 'csrc'}", str(PROBE), "-o", str(exe)], check=True)

    def plan(queries):
        """queries: (planes, size, elem_bytes, static_smem, (per_block, optin))."""
        text = "".join(f"{p} {s} {e} {st} {lim[0]} {lim[1]}\n" for p, s, e, st, lim in queries)
        out = subprocess.run([str(exe)], input=text, capture_output=True, text=True, check=True)
        rows = [line.split() for line in out.stdout.splitlines()]
        return [Launch(r[0], *map(int, r[1:3]), r[3] == "1", *map(int, r[4:])) for r in rows]
    return plan


def one(probe, planes, size, elem, static, limits) -> Launch:
    return probe([(planes, size, elem, static, limits)])[0]


@pytest.mark.parametrize("limits", [SM80, SM90], ids=["sm80", "sm90"])
@pytest.mark.parametrize("static", [FWD, BWD], ids=["fwd", "bwd"])
@pytest.mark.parametrize("h, w, elem", [(96, 128, FP32), (48, 256, FP32), (64, 192, FP32),
                                        (128, 192, HALF)])
def test_issue_window_shapes_opt_in(probe, h, w, elem, static, limits):
    """48 KiB of dynamic shared memory plus the static scratch is over the
    default limit: the kernel must opt in (the defect skipped it)."""
    launch = one(probe, 2 * 3, h * w, elem, static, limits)
    assert launch.path == "plane"
    assert launch.dynamic_smem == h * w * elem == DEFAULT
    assert launch.needs_optin


@pytest.mark.parametrize("elem, static, window", [
    (FP32, BWD, range(12225, 12289)), (FP32, FWD, range(12257, 12289)),
    (HALF, BWD, range(24449, 24577)), (HALF, FWD, range(24513, 24577))])
def test_opt_in_window_exactly(probe, elem, static, window):
    """The sizes whose dynamic part fits in 48 KiB but whose total does not are
    exactly the window of the issue (backward: fp32 12225..12288, half
    24449..24576), and those need the opt-in; smaller planes do not."""
    sizes = range(window.start - 300, DEFAULT // elem + 300)
    launches = probe([(1, s, elem, static, SM90) for s in sizes])
    optin_small = [s for s, l in zip(sizes, launches) if l.needs_optin and l.dynamic_smem <= DEFAULT]
    assert optin_small == list(window)
    assert all(l.needs_optin == (s * elem + static > DEFAULT) for s, l in zip(sizes, launches))


@pytest.mark.parametrize("limits, elem, largest, side", [
    (SM90, FP32, 58048, 240), (SM80, FP32, 41664, 204),
    (SM90, HALF, 116096, 340), (SM80, HALF, 83328, 288)], ids=["sm90-fp32", "sm80-fp32",
                                                              "sm90-half", "sm80-half"])
def test_plane_limits(probe, limits, elem, largest, side):
    """Largest plane the backward plane kernel stages: (opt-in - 256 B) / elem,
    and the largest square, as drs_kernels.cu and the README state them."""
    assert largest == (limits[1] - BWD) // elem and side == math.isqrt(largest)
    at, above = probe([(1, largest, elem, BWD, limits), (1, largest + 1, elem, BWD, limits)])
    assert at.path == "plane" and at.max_plane_size == largest and at.needs_optin
    assert at.dynamic_smem + BWD <= limits[1]
    assert above.path == "chunk" and above.dynamic_smem == 0 and not above.needs_optin
    square = probe([(1, side * side, elem, static, limits) for static in (FWD, BWD)])
    above_square = one(probe, 1, (side + 1) ** 2, elem, FWD, limits)
    assert {l.path for l in square} == {"plane"} and above_square.path == "chunk"
    doc = (ROOT / "csrc" / "cuda" / "drs_kernels.cu").read_text()
    assert f"{largest:,}" in doc and f"{side} x {side}" in doc
    assert f"{side} x {side}" in (ROOT / "README.md").read_text()


def test_many_planes_one_launch(probe):
    """N * C = 32768 planes (the old check rejected N * C > 32766): one launch
    on the plane path and on the chunk path."""
    small, large = probe([(32768, 64, FP32, BWD, SM90), (32768, 1200 * 1100, FP32, BWD, SM90)])
    assert small.path == "plane" and small.planes_per_launch == 32768
    assert large.path == "chunk" and large.planes_per_launch == 32768
    assert large.chunks * 32768 <= MAX_GRID_X


def test_large_plane_chunks(probe):
    """1200 x 1100: the chunk path, 2048 elements per block, a partial last chunk."""
    for elem in (FP32, HALF):
        launch = one(probe, 2, 1200 * 1100, elem, BWD, SM90)
        assert launch.path == "chunk" and launch.threads == 256
        assert (launch.chunks, launch.chunk_len) == (645, 2048)
        assert (launch.chunks - 1) * 2048 < 1200 * 1100 <= launch.chunks * 2048


def test_grid_slices_when_blocks_exceed_grid(probe):
    """Blocks = planes x chunks above 2^31 - 1: launched in slices of whole
    planes, each slice as large as the grid allows."""
    size = 2**28  # 65535 chunks at most per plane: chunk_len grows
    launch = one(probe, 100_000, size, HALF, BWD, SM90)
    assert launch.chunks <= 65535 and launch.chunks * launch.chunk_len >= size
    assert (launch.chunks - 1) * launch.chunk_len < size
    per = launch.planes_per_launch
    assert per < 100_000 and per * launch.chunks <= MAX_GRID_X < (per + 1) * launch.chunks
    huge = one(probe, 3_000_000_000, 1, FP32, FWD, SM90)
    assert huge.path == "plane" and huge.planes_per_launch == MAX_GRID_X


@pytest.mark.parametrize("size, threads", [(1, 256), (4095, 256), (4096, 512), (32767, 512),
                                           (32768, 1024)])
def test_plane_threads(probe, size, threads):
    assert one(probe, 1, size, FP32, FWD, SM90).threads == threads
