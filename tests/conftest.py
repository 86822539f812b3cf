"""Shared test fixtures: fresh random seeds (reported on failure) and the CUDA marker.

Tests marked ``cuda`` are skipped unless a GPU and the CUDA build of wsss_fast
are there. With ``WSSS_REQUIRE_CUDA=1`` (scripts/gpu_check.sh on a GPU host)
nothing may skip silently: no GPU or no CUDA build is a usage error, and a
``cuda`` test that skips for any reason is reported as failed.
"""
from __future__ import annotations

import os
import secrets

import pytest
import torch


def cuda_ready() -> bool:
    import wsss_fast

    return torch.cuda.is_available() and wsss_fast.backend_info()["cuda"]


def cuda_required() -> bool:
    return os.environ.get("WSSS_REQUIRE_CUDA") == "1"


def pytest_collection_modifyitems(config, items):
    if cuda_ready():
        return
    if cuda_required():
        import wsss_fast

        info = wsss_fast.backend_info()
        raise pytest.UsageError(
            "WSSS_REQUIRE_CUDA=1 but the cuda tests cannot run: torch.cuda.is_available() = "
            f"{info['cuda_available']}, CUDA kernels compiled = {info['cuda']} "
            f"(import error: {info['import_error']})")
    skip = pytest.mark.skip(reason="needs a CUDA GPU and the CUDA build of wsss_fast")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and cuda_required() and "cuda" in item.keywords:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"cuda test skipped with WSSS_REQUIRE_CUDA=1: {reason}"


@pytest.fixture
def gen(request) -> torch.Generator:
    """A CPU generator with a fresh seed per test; the seed is in the report."""
    seed = secrets.randbits(31)
    request.node.user_properties.append(("seed", seed))
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)
