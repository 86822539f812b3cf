"""build_backend/torch_backend.py, the PEP 517 backend of pyproject.toml:
setuptools' hooks, built against the torch of the target environment, never a
torch pulled into pip's isolated build environment."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
from setuptools import build_meta

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "build_backend"))
import torch_backend  # noqa: E402

HOOKS = ["get_requires_for_build_wheel", "get_requires_for_build_sdist",
         "get_requires_for_build_editable", "prepare_metadata_for_build_wheel",
         "prepare_metadata_for_build_editable", "build_wheel", "build_sdist", "build_editable"]


def test_pyproject_builds_with_this_backend_and_without_torch():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    system = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    assert system["build-backend"] == "torch_backend"
    assert system["backend-path"] == ["build_backend"]
    assert not [r for r in system["requires"] if re.match(r"torch\b", r)]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_setuptools_hook_is_wrapped(hook):
    assert hasattr(build_meta, hook)
    assert getattr(torch_backend, hook).__wrapped__ is getattr(build_meta, hook)


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """An isolated build as pip makes it: torch does not import, and the
    target environment's site-packages is tmp_path/site (empty)."""
    site = tmp_path / "site"
    site.mkdir()
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real_find_spec(name, *a))
    monkeypatch.setattr(torch_backend.sysconfig, "get_paths",
                        lambda: {"purelib": str(site), "platlib": str(site)})
    monkeypatch.setattr(sys, "path", list(sys.path))
    return site


def test_torch_importable_leaves_the_path_alone(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = list(sys.path)
    torch_backend.require_torch()
    assert sys.path == before


def test_isolated_build_uses_the_installed_torch(isolated):
    (isolated / "torch").mkdir()
    (isolated / "torch" / "__init__.py").write_text("")
    torch_backend.require_torch()
    assert sys.path[-1] == str(isolated)


def test_no_torch_stops_with_one_line_saying_what_to_type(isolated):
    (isolated / "torch").mkdir()  # a leftover folder is no torch
    with pytest.raises(SystemExit) as stop:
        torch_backend.get_requires_for_build_editable()
    message = str(stop.value.code)
    assert "\n" not in message and sys.prefix in message
    pin = re.search(r"^TORCH_PIN \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert f"pip install {pin}" in message and "pip install -e ." in message
