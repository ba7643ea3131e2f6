"""Mamba-2's mixer after in_proj as one autograd function around our own kernels: the SSD scan of
:mod:`kotomamba.ops.ssd_triton` (one-launch forward, split backward) and the gated RMSNorm of
:mod:`kotomamba.ops.norm_triton` and the channel-last convolution of :mod:`kotomamba.ops.conv_triton`
(document resets included). :func:`kotomamba.ops.fused.mamba2_split_conv1d_scan_ref` is the twin;
tests/gpu/test_gpu_conv.py checks it against the twin and mamba-ssm's function.

Dispatched by :func:`kotomamba.ops.fused.mamba2_split_conv1d_scan` wherever :func:`takes` the shape:
the trainer runs faster on it than on mamba-ssm's function (bench/RESULTS.md, session 15).

The maths, arguments and memory plan are those of mamba-ssm's ``mamba_split_conv1d_scan_combined``
(``mamba_ssm/ops/triton/ssd_combined.py``): the forward keeps zxbcdt, the scan's output before the
norm and the norm's rstd (not the convolution's output, nor the norm's); the backward reruns the
convolution and the norm's output. The gradients of the convolution's input, of z and of dt land in
their slices of one [b, L, width] buffer, as zxbcdt lies. ``chunk_size`` is accepted for the
drop-in signature and unused: our scan's blocking is internal and exact.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kotomamba.ops.conv_triton import TAPS, conv_backward, conv_forward
from kotomamba.ops.fused import Mamba2Row
from kotomamba.ops.linear import weight_grad
from kotomamba.ops.norm_triton import rms_norm_bwd, rms_norm_fwd
from kotomamba.ops.ssd_triton import Steps, _bwd_split, _fwd, blockings

# Our SSD's blockings here: the forward's (positions per block, head-dim columns, warps) and the split
# backward's (ssd_triton.SPLIT_BWD_DEFAULT's fields: its head-looping launches, the states rerun), the
# fastest timed that holds no states from forward to backward (bench/RESULTS.md).
SSD_FWD_CONFIG = (32, 64, 4)
SSD_SPLIT_CONFIG = (64, 64, 128, 4, 64, 4, 64, 4, 0, 0, 1, 4, 0, 0, 1, 8)


@dataclass(frozen=True)
class MixerShape:
    """The non-tensor arguments: heads of ``headdim`` columns in ``ngroups`` groups, the norm's epsilon
    and dt's clamp."""

    headdim: int
    ngroups: int
    norm_eps: float
    dt_limit: tuple[float, float]

    def row(self, zxbcdt: torch.Tensor, nheads: int) -> Mamba2Row:
        return Mamba2Row.of(zxbcdt.shape[-1], nheads, self.headdim, self.ngroups)

    def steps(self, dt: torch.Tensor, dt_bias: torch.Tensor) -> Steps:
        """The scan's step from dt [b, L, h] (a slice of zxbcdt)."""
        return Steps(dt, dt_bias, True, self.dt_limit)

    def group_size(self, nheads: int) -> int:
        return nheads * self.headdim // self.ngroups

    def ssd_blockings(self, nheads: int, dstate: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Our SSD's forward and split-backward blockings fitted to these heads."""
        fwd, _, split = blockings(self.headdim, dstate, nheads // self.ngroups, SSD_FWD_CONFIG, SSD_FWD_CONFIG,
                                  SSD_SPLIT_CONFIG)
        return fwd, split


@functools.lru_cache(maxsize=None)
def takes(headdim: int, dstate: int, heads_per_group: int, width: int) -> bool:
    """Whether our SSD kernels run heads of ``headdim`` columns and a state of ``dstate`` (both powers of
    two >= 16) with this module's blockings, and our convolution its ``width``. Asked at every mixer call, so
    remembered per shape."""
    if width > TAPS:
        return False
    try:
        blockings(headdim, dstate, heads_per_group, SSD_FWD_CONFIG, SSD_FWD_CONFIG, SSD_SPLIT_CONFIG)
    except ValueError:
        return False
    return True


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
        fwd_config, _ = shape.ssd_blockings(nheads, B.shape[-1])
        scanned, _, _ = _fwd(x, shape.steps(dt, dt_bias).steps(), A, B, C, D, None, seq_idx, fwd_config)
        normed, _, rstd = rms_norm_fwd(scanned.flatten(0, 1).flatten(-2), norm_weight, shape.norm_eps,
                                       z=z.flatten(0, 1), group_size=shape.group_size(nheads))
        normed = normed.unflatten(0, (batch, seqlen))
        ctx.out_proj_dtypes = (out_proj_weight.dtype, None if out_proj_bias is None else out_proj_bias.dtype)
        if torch.is_autocast_enabled("cuda"):
            dtype = torch.get_autocast_dtype("cuda")
            normed, out_proj_weight = normed.to(dtype), out_proj_weight.to(dtype)
            out_proj_bias = None if out_proj_bias is None else out_proj_bias.to(dtype)
        ctx.save_for_backward(zxbcdt, conv1d_weight, conv1d_bias, scanned, A, D, dt_bias, seq_idx, norm_weight, rstd,
                              out_proj_weight)
        ctx.shape = shape
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
        x, B, C = row.heads(conv_forward(xBC, conv1d_weight, conv1d_bias, seq_idx, True))
        dzxbcdt = torch.empty_like(zxbcdt)
        dz, dxBC_in, ddt_in = row.split(dzxbcdt)

        dnormed = F.linear(dout, out_proj_weight.t()).flatten(0, 1)
        normed = torch.empty_like(dnormed)
        dscanned, _, _, dnorm_weight = rms_norm_bwd(
            dnormed, scanned.flatten(0, 1).flatten(-2), norm_weight, rstd, z=z.flatten(0, 1),
            group_size=shape.group_size(nheads), dz=dz.flatten(0, 1), y=normed)
        # The scan writes dx and the raw dt's gradient into their places; dB and dC (float32 sums) are copied.
        dxBC = torch.empty_like(xBC, memory_format=torch.contiguous_format)
        dx, dB_part, dC_part = row.heads(dxBC)
        _, _, dA, dB, dC, dD, _, ddt_bias = _bwd_split(
            x, shape.steps(dt, dt_bias), A, B, C, D, None, seq_idx, dscanned.view(batch, seqlen, nheads, shape.headdim),
            None, shape.ssd_blockings(nheads, B.shape[-1])[1], None, dx=dx, ddt=ddt_in)
        dB_part.copy_(dB)
        dC_part.copy_(dC)
        dout_flat = dout.flatten(0, 1)
        weight_dtype, bias_dtype = ctx.out_proj_dtypes
        dout_proj_weight = weight_grad(dout_flat.t(), normed.to(dout_flat.dtype), weight_dtype)
        dout_proj_bias = None if bias_dtype is None else dout_flat.sum(0, dtype=bias_dtype)
        _, dconv_weight, dconv_bias = conv_backward(xBC, conv1d_weight, conv1d_bias, seq_idx, dxBC, True, dx=dxBC_in)
        return (dzxbcdt, dconv_weight, dconv_bias, ddt_bias.to(dt_bias.dtype), dA.to(A.dtype),
                dD.to(D.dtype), None, dnorm_weight, dout_proj_weight, dout_proj_bias, None)


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
    [b, L, 2*d_inner + 2*g*n + h]; conv1d_weight [d_inner + 2*g*n, W]; dt_bias, A, D [h]; norm_weight [d_inner]; seq_idx [b, L].
    Returns [b, L, d_model]."""
    shape = MixerShape(headdim, ngroups, norm_eps, tuple(dt_limit))
    if seq_idx is not None:
        seq_idx = seq_idx.to(torch.int32).contiguous()
    return _SplitConvScan.apply(zxbcdt, conv1d_weight.contiguous(), conv1d_bias, dt_bias, A, D, seq_idx,
                                norm_weight.contiguous(), out_proj_weight, out_proj_bias, shape)
