"""One recurrent step of the SSM for decoding (Mamba-1 and Mamba-2), O(1) in the sequence length.

Kernel: ``mamba_ssm.ops.triton.selective_state_update.selective_state_update`` (Triton).
Reference: the same update in PyTorch, float32, the state updated in place.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kotomamba.ops.dispatch import kernel_module, use_kernels

_KERNEL = "mamba_ssm.ops.triton.selective_state_update"


def selective_state_update_ref(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """``state = exp(dt*A) * state + dt * B * x``; returns ``(C . state + D*x) [* silu(z)]``.

    Mamba-1 shapes: state [b, d, n], x/dt/z [b, d], A [d, n], B/C [b, n], D/dt_bias [d].
    Mamba-2 shapes: state [b, h, p, n], x/dt/z [b, h, p], A [h, p, n], B/C [b, g, n], D/dt_bias [h, p]
    (heads split evenly over the g groups). Returns x's shape and dtype.
    """
    ct = torch.promote_types(x.dtype, torch.float32)
    has_heads = state.dim() == 4
    if not has_heads:
        state_, x, dt, A = state.unsqueeze(1), x.unsqueeze(1), dt.unsqueeze(1), A.unsqueeze(0)
        B, C = B.unsqueeze(1), C.unsqueeze(1)
        z = z.unsqueeze(1) if z is not None else None
        D = D.unsqueeze(0) if D is not None else None
        dt_bias = dt_bias.unsqueeze(0) if dt_bias is not None else None
    else:
        state_ = state
    nheads, ngroups = state_.shape[1], B.shape[1]
    dt = dt.to(ct)
    if dt_bias is not None:
        dt = dt + dt_bias.to(ct)
    if dt_softplus:
        dt = F.softplus(dt)
    B = B.to(ct).repeat_interleave(nheads // ngroups, dim=1)[:, :, None, :]  # [b, h, 1, n]
    C = C.to(ct).repeat_interleave(nheads // ngroups, dim=1)[:, :, None, :]
    decay = torch.exp(dt[..., None] * A.to(ct))
    new_state = state_.to(ct) * decay + (dt * x.to(ct))[..., None] * B
    state_.copy_(new_state)
    y = (new_state * C).sum(-1)
    if D is not None:
        y = y + x.to(ct) * D.to(ct)
    if z is not None:
        y = y * F.silu(z.to(ct))
    y = y.to(x.dtype)
    return y if has_heads else y.squeeze(1)


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """Dispatching twin of :func:`selective_state_update_ref`."""
    if not use_kernels(x, _KERNEL):
        return selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    return kernel_module(_KERNEL).selective_state_update(
        state, x, dt, A, B, C, D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus
    )
