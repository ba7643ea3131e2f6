"""One decoding step of a Mamba-2 mixer, from in_proj's output to out_proj's (mamba-ssm ``Mamba2.step``).

Kernels: ours (:mod:`kotomamba.ops.mamba2_decode_triton`): two launches, "mix" (convolution update, dt,
state update, ``y * silu(z)``) and "out" (the gated norm applied on load into out_proj's matrix-vector
product). Reference: the composition of this package's reference ops, in float32.

The convolution state is circular: ``conv_state`` [b, conv_dim, W] holds the inputs of the last W positions,
the input of position t in slot ``t % W``, and ``position`` (a 0-d int64 tensor on the state's device, so a
CUDA graph replays it) counts the positions consumed so far. A step writes its input into slot
``position % W`` (whose input no tap reads any more) and moves nothing, so the many programs of the kernel
that read the shared B and C channels never race with the one that writes them (causal-conv1d's
``causal_conv1d_update(..., cache_seqlens=...)`` keeps its state the same way).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kotomamba.ops.dispatch import kernel_module, use_kernels
from kotomamba.ops.fused import Mamba2Row
from kotomamba.ops.norm import gated_rms_norm_ref
from kotomamba.ops.causal_conv1d import conv_state_from_inputs
from kotomamba.ops.ssd import DEFAULT_DT_LIMIT, step_size
from kotomamba.ops.ssm_step import selective_state_update_ref

_KERNEL = "kotomamba.ops.mamba2_decode_triton"


def circular_conv_state(x: torch.Tensor, width: int) -> torch.Tensor:
    """The circular convolution state after x [b, D, L], positions 0..L-1 (zeros for the positions before
    0): [b, D, width] with the input of position t in slot ``t % width``."""
    return torch.roll(conv_state_from_inputs(x, width), shifts=x.shape[-1] % width, dims=-1)


def conv_update_circular_ref(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    position: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``silu(bias + sum_k weight[:, k] * input[t - (W - 1) + k])`` at t = ``position``, x [b, D] being
    input[t]; x is written into ``conv_state`` [b, D, W] (circular, see the module). weight: [D, W].
    Returns [b, D] float32. No host synchronisation (CUDA graphs can hold it)."""
    width = weight.shape[-1]
    conv_state.index_copy_(2, (position % width).view(1), x.unsqueeze(-1).to(conv_state.dtype))
    order = (position + 1 + torch.arange(width, device=conv_state.device)) % width  # oldest first
    taps = conv_state.index_select(2, order).float()
    y = (taps * weight.float()).sum(-1)
    if bias is not None:
        y = y + bias.float()
    return F.silu(y)


def mamba2_decode_mix_ref(
    zxbcdt: torch.Tensor,
    conv_state: torch.Tensor,
    ssm_state: torch.Tensor,
    position: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    dt_bias: torch.Tensor,
    A_log: torch.Tensor,
    D: torch.Tensor | None,
    headdim: int,
    ngroups: int,
    dt_limit: tuple[float, float] = DEFAULT_DT_LIMIT,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The "mix" part of a step: zxbcdt [b, 2*d_inner + 2*g*n + h] (order z, x, B, C, dt; in_proj's
    output) -> y [b, d_inner] (the SSM's output with D's skip) and z [b, d_inner], both float32.
    Updates ``conv_state`` [b, d_inner + 2*g*n, W] (circular) and ``ssm_state`` [b, h, p, n] in place.
    conv_weight: [conv_dim, W]; dt_bias, A_log, D: [h]."""
    row = Mamba2Row.of(zxbcdt.shape[-1], dt_bias.shape[0], headdim, ngroups)
    z, xBC, dt = row.split(zxbcdt)
    xBC = conv_update_circular_ref(xBC, conv_state, position, conv_weight, conv_bias)
    x, B, C = row.heads(xBC)
    p, n = headdim, row.dstate
    dt = step_size(dt.float(), dt_bias, True, dt_limit)
    A = -torch.exp(A_log.float())
    y = selective_state_update_ref(
        ssm_state, x, dt[..., None].expand(-1, -1, p), A[:, None, None].expand(-1, p, n), B, C,
        None if D is None else D.float()[:, None].expand(-1, p),
    )
    return y.flatten(-2), z.float()


def mamba2_decode_step_ref(
    zxbcdt: torch.Tensor,
    conv_state: torch.Tensor,
    ssm_state: torch.Tensor,
    position: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    dt_bias: torch.Tensor,
    A_log: torch.Tensor,
    D: torch.Tensor | None,
    norm_weight: torch.Tensor,
    norm_eps: float,
    out_proj_weight: torch.Tensor,
    out_proj_bias: torch.Tensor | None,
    headdim: int,
    ngroups: int,
    dt_limit: tuple[float, float] = DEFAULT_DT_LIMIT,
) -> torch.Tensor:
    """One step of the mixer after in_proj: :func:`mamba2_decode_mix_ref`, then the gated RMSNorm (norm
    after the gate, per group of d_inner / ngroups channels; norm_weight [d_inner]) and out_proj
    (out_proj_weight [d_model, d_inner]). Returns [b, d_model] in out_proj_weight's dtype. Does not move
    ``position``: the caller counts the step once for all layers."""
    y, z = mamba2_decode_mix_ref(zxbcdt, conv_state, ssm_state, position, conv_weight, conv_bias, dt_bias, A_log,
                                 D, headdim, ngroups, dt_limit)
    normed = gated_rms_norm_ref(y, z, norm_weight.float(), norm_eps, group_size=y.shape[-1] // ngroups)
    return F.linear(normed.to(out_proj_weight.dtype), out_proj_weight, out_proj_bias)


def mamba2_decode_step(
    zxbcdt: torch.Tensor,
    conv_state: torch.Tensor,
    ssm_state: torch.Tensor,
    position: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    dt_bias: torch.Tensor,
    A_log: torch.Tensor,
    D: torch.Tensor | None,
    norm_weight: torch.Tensor,
    norm_eps: float,
    out_proj_weight: torch.Tensor,
    out_proj_bias: torch.Tensor | None,
    headdim: int,
    ngroups: int,
    dt_limit: tuple[float, float] = DEFAULT_DT_LIMIT,
) -> torch.Tensor:
    """Dispatching twin of :func:`mamba2_decode_step_ref` (same arguments and result)."""
    args = (zxbcdt, conv_state, ssm_state, position, conv_weight, conv_bias, dt_bias, A_log, D, norm_weight,
            norm_eps, out_proj_weight, out_proj_bias, headdim, ngroups, dt_limit)
    if not use_kernels(zxbcdt, _KERNEL):
        return mamba2_decode_step_ref(*args)
    return kernel_module(_KERNEL).mamba2_decode_step_triton(*args)
