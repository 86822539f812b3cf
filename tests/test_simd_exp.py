"""The CPU kernels' vector exp (csrc/cpu/vec.h, simd::exp_at; the dense CRF's
softmax): the same bits at 4, 8 and 16 lanes (the widths the CRF picks by CPU),
within 2 ulp of exp above -87.336 (1 measured) and one value of about 1.18e-38
below.
tests/cpp/exp_probe.cpp is compiled here with the host compiler."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_exp_is_accurate_and_the_same_at_every_width(tmp_path):
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    exe = tmp_path / "exp_probe"
    subprocess.run([cxx, "-std=c++17", "-O2", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror",
                    f"-I{ROOT / 'csrc'}", str(ROOT / "tests" / "cpp" / "exp_probe.cpp"), "-o",
                    str(exe)], check=True)
    words = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    result = dict(zip(words[::2], map(int, words[1::2])))
    print(result)
    assert result["checked"] > 10000
    assert result["mismatches"] == 0 and result["max_ulp"] <= 2
