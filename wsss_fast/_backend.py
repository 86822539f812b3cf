"""Loads the compiled extension and decides, per call, between its kernels and
the pure-PyTorch references.

The operators live under ``torch.ops.wsss_fast`` once ``wsss_fast._C`` is
imported. When the extension is missing, or was built without CUDA and a CUDA
tensor comes in, the Python API of each op runs its reference implementation
instead and says so once with a :class:`BackendWarning`.
"""
from __future__ import annotations

import warnings

import torch

try:
    from . import _C  # noqa: F401  (registers torch.ops.wsss_fast.*)

    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # not built, or built against another torch
    _C = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"


class BackendWarning(RuntimeWarning):
    """A wsss_fast operator fell back to its pure-PyTorch reference."""


_warned: set[tuple[str, str]] = set()


def has_kernel(op: str, device_type: str) -> bool:
    """True if ``torch.ops.wsss_fast.<op>`` has a compiled kernel for the device type."""
    if _C is None:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"wsss_fast::{op}", key)


def use_kernel(op: str, device_type: str) -> bool:
    """True to run the compiled kernel; otherwise warns once per (op, device) that
    the pure-PyTorch reference runs instead, and returns False."""
    if has_kernel(op, device_type):
        return True
    if (op, device_type) not in _warned:
        _warned.add((op, device_type))
        why = (f"the compiled extension is not available ({_IMPORT_ERROR})" if _C is None
               else f"the compiled extension has no {device_type} kernel for it")
        warnings.warn(f"wsss_fast.ops.{op}: {why}; running the pure-PyTorch reference, "
                      "which is correct but slower. See wsss_fast.backend_info().",
                      BackendWarning, stacklevel=3)
    return False


def backend_info() -> dict:
    """What is compiled and what runs here.

    Returns a dict with keys: ``compiled`` (bool: the extension imported),
    ``import_error`` (str or None), ``cpu`` and ``cuda`` (bool: kernels compiled
    for that device), ``cuda_arch_list`` (str, as given to the build),
    ``cuda_runtime_version`` (int CUDART_VERSION of the build, or None),
    ``built_with_torch`` (str), ``torch_version`` and ``torch_cuda_version``
    (the running torch), ``cuda_available`` (bool) and ``ops`` (the registered
    operator names).
    """
    info = {"compiled": _C is not None, "import_error": _IMPORT_ERROR, "cpu": False,
            "cuda": False, "cuda_arch_list": "", "cuda_runtime_version": None,
            "built_with_torch": None}
    if _C is not None:
        built = _C.build_info()
        info.update({k: built[k] for k in ("cpu", "cuda", "cuda_arch_list", "cuda_runtime_version")})
        info["built_with_torch"] = built["torch_version"]
    info["torch_version"] = torch.__version__
    info["torch_cuda_version"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    info["ops"] = sorted(name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names()
                         if name.startswith("wsss_fast::"))
    return info
