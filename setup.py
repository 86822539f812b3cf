"""Builds wsss_fast._C: the C++ CPU kernels always, the CUDA kernels when torch
has CUDA and nvcc is found (or FORCE_CUDA=1).

Environment:
  FORCE_CUDA=1            build the CUDA kernels even when torch sees no GPU.
  TORCH_CUDA_ARCH_LIST    GPU architectures, e.g. "8.0;9.0". Without it and
                          without a visible GPU: DEFAULT_CUDA_ARCH_LIST.
  WSSS_FAST_DEBUG=1       -O0 -g builds.
"""
import glob
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

# Ampere, Ada and Hopper, plus PTX for newer GPUs to JIT from.
DEFAULT_CUDA_ARCH_LIST = "8.0;8.6;8.9;9.0+PTX"


def with_cuda():
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


def extension():
    debug = os.environ.get("WSSS_FAST_DEBUG", "0") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    macros = [("WSSS_TORCH_VERSION", f'"{torch.__version__}"')]
    # -fopenmp makes at::parallel_for use torch's OpenMP thread pool; the
    # symbols resolve to the libgomp that libtorch already loads.
    # -ffp-contract=off: a * b + c rounds twice, as written, also where the
    # target has FMA (the dense CRF's lattice must match pydensecrf's float
    # arithmetic step by step).
    cxx = opt + ["-fopenmp", "-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas"]
    if not with_cuda():
        return CppExtension("wsss_fast._C", sources, define_macros=macros,
                            extra_compile_args={"cxx": cxx})
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "visible GPUs")
    sources += sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu"))
    macros += [("WITH_CUDA", None), ("WSSS_CUDA_ARCH_LIST", f'"{arch_list}"')]
    nvcc = opt + ["-lineinfo", "--expt-relaxed-constexpr"]
    return CUDAExtension("wsss_fast._C", sources, define_macros=macros,
                         extra_compile_args={"cxx": cxx, "nvcc": nvcc})


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
