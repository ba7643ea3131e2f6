"""Choose between the CUDA/Triton kernels of mamba-ssm / causal-conv1d and our reference twins.

The kernels are imported lazily (importing mamba-ssm without its CUDA build fails, and importing it
costs seconds), once per process. ``KOTOMAMBA_FORCE_REFERENCE=1`` (read at every call, so tests can
flip it) forces the reference path everywhere.
"""
from __future__ import annotations

import functools
import importlib
import os

import torch

FORCE_REFERENCE_ENV = "KOTOMAMBA_FORCE_REFERENCE"


def force_reference() -> bool:
    """True when the environment asks for the pure-PyTorch path."""
    return os.environ.get(FORCE_REFERENCE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=None)
def kernel_module(name: str):
    """Import ``name`` (e.g. ``"mamba_ssm.ops.triton.ssd_combined"``) or return None if it fails."""
    try:
        return importlib.import_module(name)
    except Exception:  # ImportError, or an OSError/RuntimeError from a broken CUDA build
        return None


def use_kernels(tensor: torch.Tensor, *modules: str) -> bool:
    """Whether an op on ``tensor`` should run the kernels from ``modules`` (all must import)."""
    if force_reference() or not tensor.is_cuda:
        return False
    return all(kernel_module(name) is not None for name in modules)
