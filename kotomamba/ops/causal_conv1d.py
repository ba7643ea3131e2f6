"""Causal depthwise 1-D convolution (the short convolution of Mamba-1 and Mamba-2).

Kernels: ``causal_conv1d.causal_conv1d_fn`` / ``causal_conv1d_update`` (Tri Dao's causal-conv1d).
Reference: the same maths with ``F.conv1d`` (or ``width`` shifted products when documents are
packed, so that no output mixes two documents).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kotomamba.ops.dispatch import kernel_module, use_kernels

_KERNEL = "causal_conv1d"


def is_channel_last(t: torch.Tensor) -> bool:
    """Whether t [b, L, d] lies as causal-conv1d's channel-last kernels take it (its transpose [b, d, L]):
    channels contiguous, batch and row strides multiples of 8 (causal-conv1d's ``causal_conv1d_fwd`` checks)."""
    return t.stride(2) == 1 and t.stride(1) % 8 == 0 and t.stride(0) % 8 == 0


def channel_last(t: torch.Tensor) -> torch.Tensor:
    """t [b, L, d] itself if :func:`is_channel_last`, else a contiguous copy (d must be a multiple of 8)."""
    return t if is_channel_last(t) else t.contiguous()


def _activate(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation is None:
        return y
    if activation in ("silu", "swish"):
        return F.silu(y)
    raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """``y[b, d, t] = act(bias[d] + sum_k weight[d, k] * x[b, d, t - (W - 1) + k])``.

    x: [B, D, L]; weight: [D, W]; bias: [D]; seq_idx: [B, L] int (document id of each position;
    taps reaching into another document read zero). Returns [B, D, L] in x's dtype; computed in
    weight's dtype as causal-conv1d's reference does.
    """
    dtype_in = x.dtype
    x = x.to(weight.dtype)
    dim, width = weight.shape
    seqlen = x.shape[-1]
    if seq_idx is None:
        y = F.conv1d(x, weight.unsqueeze(1), bias, padding=width - 1, groups=dim)[..., :seqlen]
    else:
        padded = F.pad(x, (width - 1, 0))
        doc = F.pad(seq_idx, (width - 1, 0), value=-1)  # -1 never equals a real document id
        y = torch.zeros_like(x)
        for k in range(width):
            same_doc = (doc[:, k : k + seqlen] == seq_idx).unsqueeze(1)
            y = y + padded[..., k : k + seqlen] * weight[:, k, None] * same_doc
        if bias is not None:
            y = y + bias[:, None]
    return _activate(y, activation).to(dtype_in)


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """Dispatching twin of :func:`causal_conv1d_ref` (same arguments and result)."""
    if not use_kernels(x, _KERNEL):
        return causal_conv1d_ref(x, weight, bias, seq_idx, activation)
    if seq_idx is not None:
        # The kernel handles seq_idx only in channel-last layout (x.stride(1) == 1).
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
        seq_idx = seq_idx.to(torch.int32)
    return kernel_module(_KERNEL).causal_conv1d_fn(x, weight, bias, seq_idx=seq_idx, activation=activation)


def causal_conv1d_update_ref(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """One decoding step. x: [B, D]; conv_state: [B, D, W], the last W inputs, updated in place
    (oldest dropped, x appended). Returns [B, D] in x's dtype."""
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x
    y = torch.sum(conv_state.to(weight.dtype) * weight, dim=-1)
    if bias is not None:
        y = y + bias
    return _activate(y, activation).to(x.dtype)


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """Dispatching twin of :func:`causal_conv1d_update_ref`."""
    if not use_kernels(x, _KERNEL):
        return causal_conv1d_update_ref(x, conv_state, weight, bias, activation)
    return kernel_module(_KERNEL).causal_conv1d_update(x, conv_state, weight, bias, activation)


def conv_state_from_inputs(x: torch.Tensor, width: int) -> torch.Tensor:
    """The decoding conv state after a prefill: the last ``width`` inputs of x [B, D, L] (zeros in
    front when L < width), as [B, D, width]."""
    return F.pad(x, (width - x.shape[-1], 0))
