"""Argument checks shared by the Python APIs of the operators."""
from __future__ import annotations

import torch


def check_dtype(op: str, name: str, tensor: torch.Tensor, cpu_dtypes: tuple[torch.dtype, ...],
                cuda_dtypes: tuple[torch.dtype, ...]) -> None:
    """Raises TypeError naming ``op`` and ``name`` unless the tensor's dtype is one
    its device's kernel takes (``cuda_dtypes`` on CUDA, ``cpu_dtypes`` elsewhere)."""
    allowed = cuda_dtypes if tensor.device.type == "cuda" else cpu_dtypes
    if tensor.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{op}: {name} on {tensor.device.type} must be one of {names}, "
                        f"got {tensor.dtype}")
