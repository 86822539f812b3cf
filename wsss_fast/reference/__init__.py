"""Pure-PyTorch reference implementations of the wsss_fast operators: the
ground truth of the tests and the fallback when a compiled kernel is missing."""
from .drs import drs
from .kmeans import KMeansResult, kmeans

__all__ = ["drs", "kmeans", "KMeansResult"]
