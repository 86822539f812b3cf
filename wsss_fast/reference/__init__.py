"""Pure-PyTorch reference implementations of the wsss_fast operators: the
ground truth of the tests and the fallback when a compiled kernel is missing."""
from .affinity import affinity
from .drs import drs
from .random_walk import random_walk, random_walk_dense, transition_matrix, transition_weights

__all__ = ["affinity", "drs", "random_walk", "random_walk_dense", "transition_matrix",
           "transition_weights"]
