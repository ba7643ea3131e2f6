"""One decoding step of a Mamba-1 mixer from in_proj's output to out_proj's input (:func:`mamba1_decode_step`, what
``Mamba1Mixer.step`` runs between its two linears): the convolution update, x_proj, dt_proj, the state update and
the gate.

Kernels: ours (:mod:`kotomamba.ops.mamba1_decode_triton`): two launches where the composition of causal-conv1d's
update, x_proj's and dt_proj's GEMVs, A's exponential and mamba-ssm's ``selective_state_update`` makes about seven,
up to that module's ``MAX_BATCH`` rows; above it that composition (:func:`mamba1_decode_step_composed`, what was
measured faster there). Reference: the composition of this package's reference ops, in float32.

The convolution state is Mamba-1's shift state, as causal-conv1d's ``causal_conv1d_update`` keeps it (and a
prefill leaves it, :func:`kotomamba.ops.causal_conv1d.conv_state_from_inputs`): ``conv_state`` [b, d_inner, W]
holds the last W inputs, oldest first; a step drops the oldest and appends its input.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kotomamba.ops.causal_conv1d import causal_conv1d_update, causal_conv1d_update_ref
from kotomamba.ops.dispatch import kernel_module, use_kernels
from kotomamba.ops.ssm_step import selective_state_update, selective_state_update_ref

_KERNEL = "kotomamba.ops.mamba1_decode_triton"


def mamba1_decode_step_ref(
    xz: torch.Tensor,
    conv_state: torch.Tensor,
    ssm_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    x_proj_weight: torch.Tensor,
    dt_proj_weight: torch.Tensor,
    dt_proj_bias: torch.Tensor,
    A_log: torch.Tensor,
    D: torch.Tensor,
) -> torch.Tensor:
    """xz [b, 2*d_inner] (in_proj's output: x, then z) -> ``(C . state + D x) * silu(z)`` [b, d_inner] in xz's
    dtype, where x is the convolution's output (silu), ``x_proj(x)`` splits into dt's low-rank input, B and C,
    ``dt = softplus(dt_proj(dt_low) + dt_proj_bias)``, ``A = -exp(A_log)`` and the state is updated to
    ``exp(dt A) * state + dt x B``. Updates ``conv_state`` [b, d_inner, W] (shift) and ``ssm_state``
    [b, d_inner, n] in place, in their dtypes; everything between in float32. conv_weight: [d_inner, W];
    conv_bias: [d_inner] or None; x_proj_weight: [dt_rank + 2n, d_inner]; dt_proj_weight: [d_inner, dt_rank];
    dt_proj_bias, D: [d_inner]; A_log: [d_inner, n]."""
    dt_rank, dstate = dt_proj_weight.shape[1], A_log.shape[1]
    x, z = xz.float().chunk(2, dim=-1)
    x = causal_conv1d_update_ref(x, conv_state, conv_weight.float(),
                                 None if conv_bias is None else conv_bias.float(), "silu")
    dt, B, C = torch.split(F.linear(x, x_proj_weight.float()), [dt_rank, dstate, dstate], dim=-1)
    y = selective_state_update_ref(ssm_state, x, F.linear(dt, dt_proj_weight.float()), -torch.exp(A_log.float()),
                                   B, C, D.float(), z=z, dt_bias=dt_proj_bias.float(), dt_softplus=True)
    return y.to(xz.dtype)


def mamba1_decode_step_composed(
    xz: torch.Tensor,
    conv_state: torch.Tensor,
    ssm_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    x_proj_weight: torch.Tensor,
    dt_proj_weight: torch.Tensor,
    dt_proj_bias: torch.Tensor,
    A_log: torch.Tensor,
    D: torch.Tensor,
) -> torch.Tensor:
    """Arguments and result as :func:`mamba1_decode_step_ref`, as mamba-ssm's ``Mamba.step`` composes it: the
    dispatched convolution update and state update (causal-conv1d's and mamba-ssm's kernels on CUDA), x_proj and
    dt_proj as linears, each result in xz's dtype."""
    dt_rank, dstate = dt_proj_weight.shape[1], A_log.shape[1]
    x, z = xz.chunk(2, dim=-1)
    x = causal_conv1d_update(x, conv_state, conv_weight, conv_bias, "silu")
    dt, B, C = torch.split(F.linear(x, x_proj_weight), [dt_rank, dstate, dstate], dim=-1)
    return selective_state_update(ssm_state, x, F.linear(dt, dt_proj_weight), -torch.exp(A_log.float()), B, C, D,
                                  z=z, dt_bias=dt_proj_bias, dt_softplus=True)


def mamba1_decode_step(
    xz: torch.Tensor,
    conv_state: torch.Tensor,
    ssm_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    x_proj_weight: torch.Tensor,
    dt_proj_weight: torch.Tensor,
    dt_proj_bias: torch.Tensor,
    A_log: torch.Tensor,
    D: torch.Tensor,
) -> torch.Tensor:
    """Dispatching twin of :func:`mamba1_decode_step_ref` (same arguments and result): our launches up to
    ``mamba1_decode_triton.MAX_BATCH`` rows, :func:`mamba1_decode_step_composed` above it."""
    args = (xz, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, A_log, D)
    if not use_kernels(xz, _KERNEL):
        return mamba1_decode_step_ref(*args)
    kernels = kernel_module(_KERNEL)
    if xz.shape[0] > kernels.MAX_BATCH:
        return mamba1_decode_step_composed(*args)
    return kernels.mamba1_decode_step_triton(*args)
