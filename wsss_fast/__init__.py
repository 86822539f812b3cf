"""wsss-fast: weakly-supervised semantic segmentation with fused C++/CUDA kernels.

``wsss_fast.ops`` holds the operators, ``wsss_fast.nn`` the modules built on
them, ``wsss_fast.reference`` their pure-PyTorch references,
``wsss_fast.sccam`` the SC-CAM sub-category labels;
:func:`backend_info` says what is compiled.
"""
from ._backend import BackendWarning, backend_info
from . import ops, nn, reference, sccam

__version__ = "0.1.0"

__all__ = ["BackendWarning", "backend_info", "ops", "nn", "reference", "sccam", "__version__"]
