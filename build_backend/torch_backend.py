"""PEP 517 build backend of wsss-fast: setuptools' (setuptools.build_meta),
built against the torch installed where wsss-fast is being installed.

wsss_fast._C is compiled against torch's headers and C++ ABI, so it must be
built with the very torch it will be imported into. torch is therefore not a
build requirement (pip would install a fresh, newest torch, often the CUDA
build with gigabytes of CUDA packages, into its isolated build environment and
compile against that one). Instead, before every hook:

* if torch imports (``--no-build-isolation``, ``make install``), nothing to do;
* else, in pip's isolated build, the target environment's site-packages
  (``sysconfig``'s purelib/platlib of the interpreter pip runs: pip hides them
  from sys.path but builds for them) are searched for torch and, when it is
  there, appended to sys.path: the build compiles against the installed torch
  and the isolated build tools keep precedence;
* else the build stops at once with one line saying what to type.
"""
from __future__ import annotations

import functools
import importlib.util
import sys
import sysconfig
from pathlib import Path

from setuptools import build_meta as _setuptools

NO_TORCH = ("wsss-fast: no torch in {prefix}; the extension is compiled against the installed "
            "torch, so install it first (CPU: pip install torch==2.13.0; GPU: the CUDA build of "
            "torch for your driver), then run pip install -e . again "
            "(python -m build: add --no-isolation)")


def target_site_dirs() -> list[str]:
    """site-packages of the environment of the running interpreter, purelib first."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def require_torch() -> None:
    """Makes the target environment's torch importable, or exits with NO_TORCH."""
    if importlib.util.find_spec("torch") is not None:
        return
    for site in target_site_dirs():
        if (Path(site) / "torch" / "__init__.py").is_file():
            sys.path.append(site)  # after the isolated build tools; no .pth processing
            importlib.invalidate_caches()
            print(f"wsss-fast: building against the torch installed in {site}", file=sys.stderr)
            return
    raise SystemExit(NO_TORCH.format(prefix=sys.prefix))


def _with_torch(hook):
    @functools.wraps(hook)
    def run(*args, **kwargs):
        require_torch()
        return hook(*args, **kwargs)
    return run


get_requires_for_build_wheel = _with_torch(_setuptools.get_requires_for_build_wheel)
get_requires_for_build_sdist = _with_torch(_setuptools.get_requires_for_build_sdist)
get_requires_for_build_editable = _with_torch(_setuptools.get_requires_for_build_editable)
prepare_metadata_for_build_wheel = _with_torch(_setuptools.prepare_metadata_for_build_wheel)
prepare_metadata_for_build_editable = _with_torch(_setuptools.prepare_metadata_for_build_editable)
build_wheel = _with_torch(_setuptools.build_wheel)
build_sdist = _with_torch(_setuptools.build_sdist)
build_editable = _with_torch(_setuptools.build_editable)
