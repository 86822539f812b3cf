"""The wsss_fast operators. Each has a compiled CPU kernel, a CUDA kernel and a
pure-PyTorch reference (:mod:`wsss_fast.reference`) it falls back to."""
from .drs import drs
from .kmeans import kmeans

__all__ = ["drs", "kmeans"]
