"""The wsss_fast operators. Each has a compiled CPU kernel, a CUDA kernel and a
pure-PyTorch reference (:mod:`wsss_fast.reference`) it falls back to."""
from .affinity import affinity, pair_offsets
from .dense_crf import CRFParams, dense_crf
from .drs import drs
from .kmeans import kmeans
from .random_walk import random_walk

__all__ = ["CRFParams", "affinity", "dense_crf", "drs", "kmeans", "pair_offsets", "random_walk"]
