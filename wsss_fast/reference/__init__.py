"""Pure-PyTorch reference implementations of the wsss_fast operators: the
ground truth of the tests and the fallback when a compiled kernel is missing."""
from .drs import drs

__all__ = ["drs"]
