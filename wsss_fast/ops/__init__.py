"""The wsss_fast operators. Each has a compiled CPU kernel, a CUDA kernel and a
pure-PyTorch reference (:mod:`wsss_fast.reference`) it falls back to."""
from .drs import drs

__all__ = ["drs"]
