"""Pure-PyTorch reference implementations of the wsss_fast operators: the
ground truth of the tests and the fallback when a compiled kernel is missing."""
from .affinity import affinity
from .dense_crf import dense_crf, dense_crf_exact
from .drs import drs
from .kmeans import KMeansResult, kmeans
from .random_walk import random_walk, random_walk_dense, transition_matrix, transition_weights

__all__ = ["KMeansResult", "affinity", "dense_crf", "dense_crf_exact", "drs", "kmeans", "random_walk", "random_walk_dense",
           "transition_matrix", "transition_weights"]
