"""Shared test fixtures: fresh random seeds (reported on failure) and the CUDA marker."""
from __future__ import annotations

import secrets

import pytest
import torch


def cuda_ready() -> bool:
    import wsss_fast

    return torch.cuda.is_available() and wsss_fast.backend_info()["cuda"]


def pytest_collection_modifyitems(config, items):
    if cuda_ready():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU and the CUDA build of wsss_fast")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def gen(request) -> torch.Generator:
    """A CPU generator with a fresh seed per test; the seed is in the report."""
    seed = secrets.randbits(31)
    request.node.user_properties.append(("seed", seed))
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)
