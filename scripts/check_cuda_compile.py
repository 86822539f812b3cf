#!/usr/bin/env python
"""Compile-checks the CUDA sources without a GPU or a CUDA build of torch.

* every csrc/cuda/*.cu is compiled by nvcc for each architecture (default
  sm_80 and sm_90) with all warnings as errors; these files include only the
  CUDA headers, so no CUDA torch is needed;
* every csrc/cuda/*.cpp (the torch-facing glue) is syntax-checked by the host
  compiler against torch's headers (the CPU wheel ships the ATen/cuda headers)
  and the CUDA runtime headers, with WITH_CUDA defined.

Usage: python scripts/check_cuda_compile.py [--arch 80 --arch 90] [FILE ...]
Exits non-zero on the first failure and prints the compiler's output.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CUDA_DIR = ROOT / "csrc" / "cuda"
DEFAULT_ARCHS = ("80", "90")


def find_nvcc() -> str | None:
    nvcc = shutil.which("nvcc")
    if nvcc is None and os.environ.get("CUDA_HOME"):
        candidate = Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc"
        nvcc = str(candidate) if candidate.exists() else None
    return nvcc


def cuda_include(nvcc: str) -> Path:
    """The CUDA runtime headers' folder (nvcc may be a wrapper script on PATH)."""
    candidates = [Path(os.environ["CUDA_HOME"]) / "include"] if os.environ.get("CUDA_HOME") else []
    candidates += [Path(nvcc).resolve().parent.parent / "include", Path("/usr/local/cuda/include")]
    for candidate in candidates:
        if (candidate / "cuda_runtime_api.h").exists():
            return candidate
    raise FileNotFoundError(f"cuda_runtime_api.h not found in any of {candidates}; set CUDA_HOME")


def nvcc_command(nvcc: str, source: Path, arch: str, out: Path) -> list[str]:
    return [nvcc, "-std=c++17", "-O3", f"-arch=sm_{arch}", "-Werror", "all-warnings",
            "-Xcompiler", "-Wall,-Wextra", "-c", str(source), "-o", str(out)]


def glue_command(nvcc: str, source: Path, shim_dir: Path) -> list[str]:
    from torch.utils.cpp_extension import include_paths

    cxx = os.environ.get("CXX", "c++")
    includes = [f"-I{p}" for p in include_paths()] + [f"-I{cuda_include(nvcc)}",
                                                     f"-I{sysconfig.get_paths()['include']}",
                                                     f"-I{shim_dir}"]
    return [cxx, "-std=c++20", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
            "-Wno-unused-parameter", "-DWITH_CUDA", *includes, str(source)]


def write_shim(tmp: Path) -> Path:
    """CPU wheels of torch lack c10/cuda/impl/cuda_cmake_macros.h, a header that
    the CUDA build generates with one macro; supply it for the syntax check."""
    header = tmp / "shim" / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    header.parent.mkdir(parents=True)
    header.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    return tmp / "shim"


def run(cmd: list[str], label: str) -> bool:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"FAIL {label}\n$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}", file=sys.stderr)
        return False
    print(f"ok   {label}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", action="append", help="compute capability digits, e.g. 90")
    parser.add_argument("files", nargs="*", type=Path, help="default: every file in csrc/cuda")
    args = parser.parse_args(argv)
    nvcc = find_nvcc()
    if nvcc is None:
        print("nvcc not found on PATH or in $CUDA_HOME/bin", file=sys.stderr)
        return 2
    files = args.files or sorted(CUDA_DIR.glob("*.cu")) + sorted(CUDA_DIR.glob("*.cpp"))
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        shim_dir = write_shim(Path(tmp))
        for source in files:
            if source.suffix == ".cu":
                for arch in args.arch or DEFAULT_ARCHS:
                    out = Path(tmp) / f"{source.stem}_sm{arch}.o"
                    ok &= run(nvcc_command(nvcc, source, arch, out), f"{source.name} sm_{arch}")
            else:
                ok &= run(glue_command(nvcc, source, shim_dir), f"{source.name} (host syntax)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
