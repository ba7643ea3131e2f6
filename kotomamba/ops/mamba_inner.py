"""Mamba-1's mixer after in_proj around our selective scan (:mod:`kotomamba.ops.selective_scan_triton`):
causal-conv1d's convolution, x_proj, dt_proj, the scan with its gate, out_proj, each an autograd op of its own.
:func:`kotomamba.ops.fused.mamba1_inner_ref` is the twin; the arguments are those of mamba-ssm's
``mamba_inner_fn`` as :func:`kotomamba.ops.fused.mamba1_inner` calls it.

Unlike ``mamba_inner_fn``, which reruns the convolution and dt_proj in its backward, autograd keeps their
outputs (and the scan's gated output, for out_proj's weight gradient) from forward to backward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kotomamba.ops.causal_conv1d import causal_conv1d
from kotomamba.ops.selective_scan_triton import selective_scan_triton


def mamba1_inner_triton(
    xz: torch.Tensor,
    conv1d_weight: torch.Tensor,
    conv1d_bias: torch.Tensor | None,
    x_proj_weight: torch.Tensor,
    dt_proj_weight: torch.Tensor,
    out_proj_weight: torch.Tensor,
    out_proj_bias: torch.Tensor | None,
    A: torch.Tensor,
    D: torch.Tensor,
    dt_bias: torch.Tensor,
) -> torch.Tensor:
    """:func:`kotomamba.ops.fused.mamba1_inner_ref`'s arguments and result: xz [b, 2*d_inner, L] -> [b, L, d_model]."""
    batch, _, seqlen = xz.shape
    dt_rank, dstate = dt_proj_weight.shape[1], A.shape[1]
    x, z = xz.chunk(2, dim=1)
    x = causal_conv1d(x, conv1d_weight.squeeze(1), conv1d_bias, activation="silu")  # [b, d_inner, L]
    x_dbl = F.linear(x.transpose(1, 2).reshape(batch * seqlen, -1), x_proj_weight)  # [b*L, dt_rank + 2n]
    # [d_inner, b*L] viewed as [b, d_inner, L]: positions stay contiguous, as the scan reads them.
    delta = (dt_proj_weight @ x_dbl[:, :dt_rank].t()).view(-1, batch, seqlen).transpose(0, 1)
    B, C = (part.reshape(batch, seqlen, dstate).transpose(1, 2)
            for part in x_dbl[:, dt_rank:].split(dstate, dim=1))
    y = selective_scan_triton(x, delta, A, B, C, D.float(), z=z, delta_bias=dt_bias.float(), delta_softplus=True)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)
