"""wsss-fast: weakly-supervised semantic segmentation with fused C++/CUDA kernels.

``wsss_fast.ops`` holds the operators, ``wsss_fast.nn`` the modules built on
them, ``wsss_fast.reference`` their pure-PyTorch references; the pipeline's
stages are in ``wsss_fast.stages`` (e.g. ``wsss_fast.stages.sccam`` for the
SC-CAM sub-category labels) and its command line in ``wsss_fast.commands``;
:func:`backend_info` says what is compiled.
"""
from ._backend import BackendWarning, backend_info
from . import ops, nn, reference

__version__ = "0.1.0"

__all__ = ["BackendWarning", "backend_info", "ops", "nn", "reference", "__version__"]
