"""Mamba-2's mixer after in_proj as one autograd function whose convolution is causal-conv1d's resetless
channel-last kernel with document resets patched in (kotomamba/ops/causal_conv1d_resets.py) and whose
gated RMSNorm's backward walks the rows in many programs (kotomamba/ops/norm_triton.py), around
mamba-ssm's SSD chunk scan kernels. :func:`kotomamba.ops.fused.mamba2_split_conv1d_scan_ref` is the
twin; tests/gpu/test_gpu_conv.py checks it against the twin and mamba-ssm's function.

Not dispatched: :func:`kotomamba.ops.fused.mamba2_split_conv1d_scan` calls mamba-ssm's function, because
the patched convolution is still slower than causal-conv1d's own resets (bench/RESULTS.md).

The maths, arguments and memory plan are those of mamba-ssm's ``mamba_split_conv1d_scan_combined``
(``mamba_ssm/ops/triton/ssd_combined.py``), whose convolution is causal-conv1d's channel-last kernel:
the forward keeps zxbcdt, the scan's output before the norm and the norm's rstd (not the
convolution's output, nor the norm's); the backward reruns the convolution and the norm's output. The
gradients of the convolution's input, of z and of dt land in their slices of one [b, L, width]
buffer, as zxbcdt lies.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mamba_ssm.ops.triton.ssd_combined import _mamba_chunk_scan_combined_bwd, _mamba_chunk_scan_combined_fwd

from kotomamba.ops.causal_conv1d_resets import conv_backward, conv_forward
from kotomamba.ops.fused import Mamba2Row
from kotomamba.ops.norm_triton import rms_norm_bwd, rms_norm_fwd


@dataclass(frozen=True)
class MixerShape:
    """The non-tensor arguments: heads of ``headdim`` columns in ``ngroups`` groups, the scan's chunk,
    the norm's epsilon and dt's clamp."""

    headdim: int
    ngroups: int
    chunk_size: int
    norm_eps: float
    dt_limit: tuple[float, float]

    def row(self, zxbcdt: torch.Tensor, nheads: int) -> Mamba2Row:
        return Mamba2Row.of(zxbcdt.shape[-1], nheads, self.headdim, self.ngroups)


class _SplitConvScan(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, seq_idx, norm_weight, out_proj_weight,
                out_proj_bias, shape: MixerShape):
        batch, seqlen, _ = zxbcdt.shape
        nheads = D.shape[0]
        row = shape.row(zxbcdt, nheads)
        z, xBC, dt = row.split(zxbcdt)
        x, B, C = row.heads(conv_forward(xBC, conv1d_weight, conv1d_bias, seq_idx, True))
        scanned, *_ = _mamba_chunk_scan_combined_fwd(
            x, dt, A, B, C, shape.chunk_size, D=D, z=None, dt_bias=dt_bias, seq_idx=seq_idx, dt_softplus=True,
            dt_limit=shape.dt_limit)
        normed, _, rstd = rms_norm_fwd(scanned.flatten(0, 1).flatten(-2), norm_weight, shape.norm_eps,
                                       z=z.flatten(0, 1), group_size=nheads * shape.headdim // shape.ngroups)
        normed = normed.unflatten(0, (batch, seqlen))
        if torch.is_autocast_enabled("cuda"):
            dtype = torch.get_autocast_dtype("cuda")
            normed, out_proj_weight = normed.to(dtype), out_proj_weight.to(dtype)
            out_proj_bias = None if out_proj_bias is None else out_proj_bias.to(dtype)
        ctx.save_for_backward(zxbcdt, conv1d_weight, conv1d_bias, scanned, A, D, dt_bias, seq_idx, norm_weight, rstd,
                              out_proj_weight)
        ctx.shape, ctx.has_out_bias = shape, out_proj_bias is not None
        return F.linear(normed, out_proj_weight, out_proj_bias)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dout):
        (zxbcdt, conv1d_weight, conv1d_bias, scanned, A, D, dt_bias, seq_idx, norm_weight, rstd,
         out_proj_weight) = ctx.saved_tensors
        shape: MixerShape = ctx.shape
        batch, seqlen, _ = zxbcdt.shape
        nheads = D.shape[0]
        row = shape.row(zxbcdt, nheads)
        z, xBC, dt = row.split(zxbcdt)
        xBC_conv = conv_forward(xBC, conv1d_weight, conv1d_bias, seq_idx, True)
        x, B, C = row.heads(xBC_conv)
        dzxbcdt = torch.empty_like(zxbcdt)
        dz, dxBC_in, ddt = row.split(dzxbcdt)
        dxBC = torch.empty_like(xBC_conv)
        dx, dB, dC = row.heads(dxBC)

        dnormed = F.linear(dout, out_proj_weight.t()).flatten(0, 1)
        normed = torch.empty_like(dnormed)
        dscanned, _, _, dnorm_weight = rms_norm_bwd(
            dnormed, scanned.flatten(0, 1).flatten(-2), norm_weight, rstd, z=z.flatten(0, 1),
            group_size=nheads * shape.headdim // shape.ngroups, dz=dz.flatten(0, 1), y=normed)
        _, _, dA, _, _, dD, _, ddt_bias, _ = _mamba_chunk_scan_combined_bwd(
            dscanned.view(batch, seqlen, nheads, shape.headdim), x, dt, A, B, C, scanned, shape.chunk_size, D=D,
            z=None, dt_bias=dt_bias, seq_idx=seq_idx, dt_softplus=True, dt_limit=shape.dt_limit,
            dx=dx, ddt=ddt, dB=dB, dC=dC)
        dout_flat = dout.flatten(0, 1)
        dout_proj_weight = dout_flat.t() @ normed.to(dout_flat.dtype)
        dout_proj_bias = dout_flat.sum(0) if ctx.has_out_bias else None
        _, dconv_weight, dconv_bias = conv_backward(xBC, conv1d_weight, conv1d_bias, seq_idx, dxBC, True,
                                                    dx=dxBC_in)
        return (dzxbcdt, dconv_weight, dconv_bias, ddt_bias, dA, dD, None, dnorm_weight, dout_proj_weight,
                dout_proj_bias, None)


def mamba2_split_conv_scan(
    zxbcdt: torch.Tensor,
    conv1d_weight: torch.Tensor,
    conv1d_bias: torch.Tensor | None,
    dt_bias: torch.Tensor,
    A: torch.Tensor,
    D: torch.Tensor,
    chunk_size: int,
    headdim: int,
    ngroups: int,
    norm_weight: torch.Tensor,
    norm_eps: float,
    out_proj_weight: torch.Tensor,
    out_proj_bias: torch.Tensor | None,
    seq_idx: torch.Tensor | None = None,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
) -> torch.Tensor:
    """Arguments and result as :func:`kotomamba.ops.fused.mamba2_split_conv1d_scan_ref`: zxbcdt
    [b, L, 2*d_inner + 2*g*n + h]; conv1d_weight [d_inner + 2*g*n, W]; dt_bias, A, D [h]; norm_weight
    [d_inner]; seq_idx [b, L]. Returns [b, L, d_model]. CUDA only (mamba-ssm's Triton kernels)."""
    shape = MixerShape(headdim, ngroups, chunk_size, norm_eps, tuple(dt_limit))
    if seq_idx is not None:
        seq_idx = seq_idx.to(torch.int32).contiguous()
    return _SplitConvScan.apply(zxbcdt, conv1d_weight.contiguous(), conv1d_bias, dt_bias, A, D, seq_idx,
                                norm_weight.contiguous(), out_proj_weight, out_proj_bias, shape)
