"""The initial time-step bias both Mamba mixers share (mamba-ssm ``modules/mamba_simple.py`` and
``modules/mamba2.py`` initialise ``dt`` the same way)."""
from __future__ import annotations

import math

import torch


def inverse_softplus_dt(n: int, dt_min: float, dt_max: float, floor: float, device) -> torch.Tensor:
    """[n] biases: dt ~ logUniform[dt_min, dt_max] clamped at ``floor``, returned as softplus^-1(dt) so
    that softplus(bias) = dt (pytorch issue 72759 for the inverse)."""
    dt = torch.exp(torch.rand(n, device=device) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))
