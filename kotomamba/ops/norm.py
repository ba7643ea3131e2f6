"""RMSNorm with the fused residual add of mamba-ssm's blocks, and the gated RMSNorm of Mamba-2.

Kernels: ours (:mod:`kotomamba.ops.norm_triton`: add + norm in one pass, residual kept in float32, and
the gated norm; the maths and arguments of mamba-ssm's ``layer_norm.rms_norm_fn`` and
``layernorm_gated.rmsnorm_fn``, with backwards that spread the rows over many programs).
References: the same maths in float32 PyTorch (after mamba-ssm's ``rms_norm_ref`` functions).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kotomamba.ops.dispatch import kernel_module, use_kernels

_KERNEL = "kotomamba.ops.norm_triton"


def residual_dtype(x: torch.Tensor, residual: torch.Tensor | None, residual_in_fp32: bool) -> torch.dtype:
    """The dtype of the summed residual an add+RMSNorm hands on: residual's when given, else float32 with
    ``residual_in_fp32``, else x's (mamba-ssm's ``layer_norm_fn``)."""
    if residual is not None:
        return residual.dtype
    return torch.float32 if residual_in_fp32 else x.dtype


def add_rms_norm_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    residual: torch.Tensor | None = None,
    eps: float = 1e-5,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
):
    """``r = x + residual``; ``y = r / rms(r) * weight``.

    x, residual: [..., d]; weight: [d]. Returns y (x's dtype), and with ``prenorm`` also r in
    :func:`residual_dtype`.
    """
    r_dtype = residual_dtype(x, residual, residual_in_fp32)
    ct = torch.promote_types(x.dtype, torch.float32)
    r = x.to(ct) if residual is None else x.to(ct) + residual.to(ct)
    y = (r * torch.rsqrt(r.square().mean(dim=-1, keepdim=True) + eps) * weight.to(ct)).to(x.dtype)
    return (y, r.to(r_dtype)) if prenorm else y


def add_rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    residual: torch.Tensor | None = None,
    eps: float = 1e-5,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
):
    """Dispatching twin of :func:`add_rms_norm_ref`."""
    if not use_kernels(x, _KERNEL):
        return add_rms_norm_ref(x, weight, residual, eps, prenorm, residual_in_fp32)
    return kernel_module(_KERNEL).add_rms_norm_triton(x, weight, residual, eps, prenorm, residual_in_fp32)


def gated_rms_norm_ref(
    x: torch.Tensor,
    z: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-5,
    group_size: int | None = None,
) -> torch.Tensor:
    """Mamba-2's output norm (norm after the gate): ``g = x * silu(z)``, normalised per group of
    ``group_size`` channels, times weight. x, z: [..., d]; weight: [d]. Returns x's dtype."""
    ct = torch.promote_types(x.dtype, torch.float32)
    g = x.to(ct) * F.silu(z.to(ct))
    size = g.shape[-1] if group_size is None else group_size
    grouped = g.unflatten(-1, (-1, size))
    normed = grouped * torch.rsqrt(grouped.square().mean(dim=-1, keepdim=True) + eps)
    return (normed.flatten(-2) * weight.to(ct)).to(x.dtype)


def gated_rms_norm(
    x: torch.Tensor,
    z: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-5,
    group_size: int | None = None,
) -> torch.Tensor:
    """Dispatching twin of :func:`gated_rms_norm_ref`."""
    if not use_kernels(x, _KERNEL):
        return gated_rms_norm_ref(x, z, weight, eps, group_size)
    return kernel_module(_KERNEL).gated_rms_norm_triton(x, z, weight, eps, group_size)
