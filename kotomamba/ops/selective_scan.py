"""Mamba-1 selective scan (S6), Gu & Dao 2023, "Mamba", Algorithm 2.

``h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t``;
``y_t = C_t . h_t + D * u_t``, optionally gated ``y * silu(z)``.

Kernel: ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` (CUDA). Reference: an exact
two-level scan in plain PyTorch: inside chunks of ``chunk_size`` steps a log-depth (Hillis-Steele)
scan over all chunks at once, then a short loop carrying the state from chunk to chunk. Every
factor is a product of decays <= 1, so nothing overflows, unlike the ``exp(-cumsum)`` trick.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kotomamba.ops.dispatch import kernel_module, use_kernels

_KERNEL = "mamba_ssm.ops.selective_scan_interface"


def _shift(t: torch.Tensor, k: int, fill: float) -> torch.Tensor:
    """Shift ``t`` by ``k`` along dim -2 (time inside a chunk), filling the front with ``fill``."""
    return F.pad(t[..., : t.shape[-2] - k, :], (0, 0, k, 0), value=fill)


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    chunk_size: int = 64,
):
    """Selective scan in float32 (float64 for float64 inputs).

    u, delta, z: [batch, D, L]; A: [D, N] (real, negative); B, C: [batch, N, L]; D, delta_bias: [D].
    Returns y [batch, D, L] in u's dtype, and with ``return_last_state`` also the final state
    [batch, D, N] (float32), like mamba-ssm's ``selective_scan_fn``.
    """
    dtype_in = u.dtype
    ct = torch.promote_types(u.dtype, torch.float32)  # float32, or float64 for gradcheck
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    u = u.to(ct)
    delta = delta.to(ct)
    if delta_bias is not None:
        delta = delta + delta_bias.to(ct)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    T = min(chunk_size, seqlen)
    pad = (-seqlen) % T
    nchunks = (seqlen + pad) // T
    # delta = 0 on the padding: decay 1 and no input, so the final state is the one at L - 1.
    delta_p = F.pad(delta, (0, pad))
    u_p = F.pad(u, (0, pad))
    B_p = F.pad(B.to(ct), (0, pad))
    # [batch, D, chunks, T, N]
    decay = torch.exp(delta_p[..., None] * A.to(ct)[:, None, :]).view(batch, dim, nchunks, T, dstate)
    inp = ((delta_p * u_p)[..., None] * B_p.transpose(1, 2)[:, None]).view(batch, dim, nchunks, T, dstate)
    k = 1
    while k < T:
        inp = inp + decay * _shift(inp, k, 0.0)
        decay = decay * _shift(decay, k, 1.0)
        k *= 2
    # inp[..., t, :] is now the state at t starting from zero at the chunk start; decay[..., t, :]
    # the product of the chunk's decays up to t. Carry the true state across chunks.
    carried = [u.new_zeros(batch, dim, dstate)]
    for c in range(nchunks - 1):
        carried.append(decay[:, :, c, -1] * carried[-1] + inp[:, :, c, -1])
    h_in = torch.stack(carried, dim=2)[:, :, :, None, :]
    h = (inp + decay * h_in).view(batch, dim, nchunks * T, dstate)[:, :, :seqlen]
    y = torch.einsum("bdln,bnl->bdl", h, C.to(ct))
    if D is not None:
        y = y + u * D.to(ct)[:, None]
    if z is not None:
        y = y * F.silu(z.to(ct))
    y = y.to(dtype_in)
    if return_last_state:
        return y, h[:, :, -1]
    return y


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """Dispatching twin of :func:`selective_scan_ref` (same arguments and results)."""
    if not use_kernels(u, _KERNEL):
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    return kernel_module(_KERNEL).selective_scan_fn(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
    )
