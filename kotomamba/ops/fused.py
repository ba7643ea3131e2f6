"""Whole-mixer fused paths used for training, exactly as mamba-ssm's modules call them.

- Mamba-1: :func:`kotomamba.ops.mamba_inner.mamba1_inner_triton` (causal-conv1d's conv1d, x_proj, dt_proj, our
  selective scan with its gate, out_proj, in one autograd function that reruns the conv and dt_proj in
  backward), which trains faster than mamba-ssm's ``mamba_inner_fn`` on an H200 (bench/RESULTS.md); mamba-ssm's
  function where ours cannot run (a d_state that is not a power of two, or a causal-conv1d without its
  ``cpp_functions``).
- Mamba-2: :func:`kotomamba.ops.split_conv_scan.mamba2_split_conv_scan` (split, our channel-last conv1d with
  ``seq_idx``, SSD scan and gated RMSNorm, out_proj), which trains faster than mamba-ssm's
  ``mamba_split_conv1d_scan_combined`` on an H200 (bench/RESULTS.md); mamba-ssm's function where ours cannot
  run (a head dim or d_state that is not a power of two >= 16, or a convolution wider than four).

The ``*_ref`` twins compose the reference ops of this package step by step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kotomamba.ops.causal_conv1d import causal_conv1d_ref
from kotomamba.ops.dispatch import kernel_module, use_kernels
from kotomamba.ops.norm import gated_rms_norm_ref
from kotomamba.ops.selective_scan import selective_scan_ref
from kotomamba.ops.ssd import ssd_chunk_scan_ref

_MAMBA1_KERNELS = ("mamba_ssm.ops.selective_scan_interface", "causal_conv1d")
_MAMBA1_OURS = ("kotomamba.ops.mamba_inner", "causal_conv1d.cpp_functions")
_MAMBA2_KERNELS = ("mamba_ssm.ops.triton.ssd_combined", "causal_conv1d")
_MAMBA2_OURS = ("kotomamba.ops.split_conv_scan",)


def mamba1_inner_ref(
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
    """Mamba-1 mixer after in_proj. xz: [b, 2*d_inner, L] (x then z); conv1d_weight: [d_inner, 1, W];
    x_proj_weight: [dt_rank + 2n, d_inner]; dt_proj_weight: [d_inner, dt_rank]; A: [d_inner, n]
    float32; D, dt_bias: [d_inner]. Returns [b, L, d_model]."""
    dt_rank = dt_proj_weight.shape[1]
    dstate = A.shape[1]
    x, z = xz.chunk(2, dim=1)
    x = causal_conv1d_ref(x, conv1d_weight.squeeze(1), conv1d_bias, activation="silu")
    x_dbl = F.linear(x.transpose(1, 2), x_proj_weight)  # [b, L, dt_rank + 2n]
    dt, B, C = torch.split(x_dbl, [dt_rank, dstate, dstate], dim=-1)
    dt = F.linear(dt, dt_proj_weight).transpose(1, 2)  # [b, d_inner, L]
    y = selective_scan_ref(
        x, dt, A, B.transpose(1, 2), C.transpose(1, 2), D.float(), z=z, delta_bias=dt_bias.float(),
        delta_softplus=True,
    )
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


def mamba1_inner(
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
    """Dispatching twin of :func:`mamba1_inner_ref` (ours, else mamba-ssm's, else the twin)."""
    if use_kernels(xz, *_MAMBA1_OURS) and kernel_module("kotomamba.ops.selective_scan_triton").takes(A.shape[1]):
        return kernel_module(_MAMBA1_OURS[0]).mamba1_inner_triton(
            xz, conv1d_weight, conv1d_bias, x_proj_weight, dt_proj_weight, out_proj_weight, out_proj_bias,
            A, D, dt_bias,
        )
    if not use_kernels(xz, *_MAMBA1_KERNELS):
        return mamba1_inner_ref(
            xz, conv1d_weight, conv1d_bias, x_proj_weight, dt_proj_weight, out_proj_weight,
            out_proj_bias, A, D, dt_bias,
        )
    return kernel_module(_MAMBA1_KERNELS[0]).mamba_inner_fn(
        xz, conv1d_weight, conv1d_bias, x_proj_weight, dt_proj_weight, out_proj_weight, out_proj_bias,
        A, None, None, D.float(), delta_bias=dt_bias.float(), delta_softplus=True,
    )


@dataclass(frozen=True)
class Mamba2Row:
    """How Mamba-2's in_proj output lies: [z | x | B | C | dt] along the last axis, with z and x of
    ``nheads * headdim`` channels, B and C of ``ngroups * dstate``, dt of ``nheads``."""

    nheads: int
    headdim: int
    ngroups: int
    dstate: int

    @classmethod
    def of(cls, width: int, nheads: int, headdim: int, ngroups: int) -> "Mamba2Row":
        """The layout of a row ``width`` channels wide."""
        return cls(nheads, headdim, ngroups, (width - 2 * nheads * headdim - nheads) // (2 * ngroups))

    def split(self, zxbcdt: torch.Tensor):
        """zxbcdt [..., 2*d_inner + 2*g*n + h] -> z [..., d_inner], xBC [..., d_inner + 2*g*n], dt [..., h] (views)."""
        dim = self.nheads * self.headdim
        return torch.split(zxbcdt, [dim, dim + 2 * self.ngroups * self.dstate, self.nheads], dim=-1)

    def heads(self, xBC: torch.Tensor):
        """xBC [..., d_inner + 2*g*n] -> x [..., h, p], B and C [..., g, n] (views)."""
        n = self.ngroups * self.dstate
        x, B, C = torch.split(xBC, [self.nheads * self.headdim, n, n], dim=-1)
        return (x.unflatten(-1, (self.nheads, self.headdim)), B.unflatten(-1, (self.ngroups, self.dstate)),
                C.unflatten(-1, (self.ngroups, self.dstate)))


def mamba2_split_conv1d_scan_ref(
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
    """Mamba-2 mixer after in_proj. zxbcdt: [b, L, 2*d_inner + 2*g*n + h] (order z, x, B, C, dt);
    conv1d_weight: [d_inner + 2*g*n, W]; dt_bias, A, D: [h]; norm_weight: [d_inner];
    seq_idx: [b, L]. Returns [b, L, d_model]."""
    row = Mamba2Row.of(zxbcdt.shape[-1], D.shape[0], headdim, ngroups)
    z, xBC, dt = row.split(zxbcdt)
    xBC = causal_conv1d_ref(
        xBC.transpose(1, 2), conv1d_weight, conv1d_bias, seq_idx=seq_idx, activation="silu"
    ).transpose(1, 2)
    x, B, C = row.heads(xBC)
    y = ssd_chunk_scan_ref(
        x, dt, A, B, C, chunk_size, D=D, dt_bias=dt_bias, dt_softplus=True, dt_limit=dt_limit, seq_idx=seq_idx,
    )
    y = gated_rms_norm_ref(y.flatten(-2), z, norm_weight, norm_eps, group_size=z.shape[-1] // ngroups)
    return F.linear(y, out_proj_weight, out_proj_bias)


def mamba2_split_conv1d_scan(
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
    """Dispatching twin of :func:`mamba2_split_conv1d_scan_ref` (ours, else mamba-ssm's, else the twin)."""
    if use_kernels(zxbcdt, *_MAMBA2_OURS):
        ours = kernel_module(_MAMBA2_OURS[0])
        row = Mamba2Row.of(zxbcdt.shape[-1], D.shape[0], headdim, ngroups)
        if ours.takes(headdim, row.dstate, row.nheads // ngroups, conv1d_weight.shape[-1]):
            return ours.mamba2_split_conv_scan(
                zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, chunk_size, headdim, ngroups, norm_weight,
                norm_eps, out_proj_weight, out_proj_bias, seq_idx, dt_limit,
            )
    if not use_kernels(zxbcdt, *_MAMBA2_KERNELS):
        return mamba2_split_conv1d_scan_ref(
            zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, chunk_size, headdim, ngroups,
            norm_weight, norm_eps, out_proj_weight, out_proj_bias, seq_idx, dt_limit,
        )
    return kernel_module(_MAMBA2_KERNELS[0]).mamba_split_conv1d_scan_combined(
        zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, chunk_size,
        seq_idx=None if seq_idx is None else seq_idx.to(torch.int32), dt_limit=dt_limit,
        activation="silu", rmsnorm_weight=norm_weight, rmsnorm_eps=norm_eps,
        outproj_weight=out_proj_weight, outproj_bias=out_proj_bias, headdim=headdim, ngroups=ngroups,
        norm_before_gate=False,
    )
