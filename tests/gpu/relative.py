"""The measure every GPU parity test judges by: relative error ||a - b|| / ||b|| in float32 (element-wise
bounds fail on a few near-zero entries of long accumulations)."""
from __future__ import annotations

import torch


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()
