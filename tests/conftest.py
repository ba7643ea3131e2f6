"""Shared pytest setup: GPU tests are skipped where there is no CUDA device."""
import pytest


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marker `gpu`)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # the marker, not any keyword (a directory named *gpu*)
            item.add_marker(skip)
