"""Norm modules holding the weights; the maths lives in :mod:`kotomamba.ops.norm`."""
from __future__ import annotations

import torch
from torch import nn

from kotomamba.ops.norm import add_rms_norm, gated_rms_norm


class RMSNorm(nn.Module):
    """RMSNorm over the last dim with parameter ``weight`` [d] (key name of mamba-ssm's RMSNorm)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, prenorm: bool = False,
                residual_in_fp32: bool = False):
        """x, residual: [..., d]. Normalises x + residual; with ``prenorm`` also returns the sum."""
        return add_rms_norm(x, self.weight, residual, self.eps, prenorm, residual_in_fp32)


class GatedRMSNorm(nn.Module):
    """Mamba-2's ``norm``: RMSNorm(x * silu(z)) per group of ``group_size`` channels."""

    def __init__(self, hidden_size: int, group_size: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.group_size = group_size
        self.weight = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x, z: [..., hidden_size] -> [..., hidden_size] in x's dtype."""
        return gated_rms_norm(x, z, self.weight, self.eps, self.group_size)
