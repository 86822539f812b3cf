"""wsss-fast: weakly-supervised semantic segmentation with fused C++/CUDA kernels.

``wsss_fast.ops`` holds the operators, ``wsss_fast.nn`` the modules built on
them, ``wsss_fast.reference`` their pure-PyTorch references; the pipeline's
stages are in ``wsss_fast.stages`` (e.g. ``wsss_fast.stages.sccam`` for the
SC-CAM sub-category labels) and its command line in ``wsss_fast.commands``;
:func:`backend_info` says what is compiled.

These names are imported on first use, so that importing the package does
not load torch: the command line sets OpenMP's environment before torch
(and its OpenMP runtime) is loaded (:mod:`wsss_fast.cpu`).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {"ops": ".ops", "nn": ".nn", "reference": ".reference",
         "BackendWarning": "._backend", "backend_info": "._backend"}

__all__ = ["BackendWarning", "backend_info", "ops", "nn", "reference", "__version__"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'wsss_fast' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name], __name__)
    value = module if _LAZY[name] == f".{name}" else getattr(module, name)
    globals()[name] = value
    return value
