"""Mamba-1's mixer after in_proj around our selective scan (:mod:`kotomamba.ops.selective_scan_triton`), as one
autograd function: causal-conv1d's convolution, x_proj, dt_proj, the scan with its gate, out_proj.
:func:`kotomamba.ops.fused.mamba1_inner_ref` is the twin; the arguments are those of mamba-ssm's
``mamba_inner_fn`` as :func:`kotomamba.ops.fused.mamba1_inner` calls it. CUDA only (causal-conv1d's kernels).

As in ``mamba_inner_fn`` (mamba_ssm/ops/selective_scan_interface.py), the forward keeps xz, x_dbl and the gated
output, and the backward reruns the convolution and dt_proj; it also keeps the scan's block states. delta and
the gradients of the scan's inputs lie channel by channel with the batch's positions in a row ([d, b*L], viewed
[b, d, L]): the layout in_proj gives xz, which the scan reads with positions contiguous and dt_proj's and
x_proj's products write and read without a copy. The backward writes dz and the convolution's dx into their
places in dxz, and adds x_proj's input gradient onto the scan's du in place. As in ``mamba_inner_fn``, the
convolution's output and the gated output are copied into [b*L, d] rows for x_proj and out_proj. The weights'
gradients are written in the weights' own dtype by their products (:func:`kotomamba.ops.linear.weight_grad`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kotomamba.ops.dispatch import kernel_module
from kotomamba.ops.linear import weight_grad
from kotomamba.ops.selective_scan_triton import _scan_backward, _scan_forward, backward_kernel, forward_config

_CONV = "causal_conv1d.cpp_functions"


def _rows(batch: int, dim: int, seqlen: int, like: torch.Tensor) -> torch.Tensor:
    """An empty [b, dim, L] tensor stored as [dim, b*L]."""
    return like.new_empty(dim, batch, seqlen).transpose(0, 1)


def _flat(t: torch.Tensor) -> torch.Tensor:
    """[b, dim, L] stored as [dim, b*L] -> that [dim, b*L] view."""
    return t.transpose(0, 1).reshape(t.shape[1], -1)


def _conv(x, conv_weight, conv_bias):
    """causal-conv1d's forward with silu: x [b, d, L] -> u [b, d, L]."""
    return kernel_module(_CONV).causal_conv1d_fwd_function(x, conv_weight, conv_bias, None, None, None, True)


def _position_rows(t: torch.Tensor) -> torch.Tensor:
    """[b, d, L] -> [b*L, d] (a copy unless stored so), the rows x_proj and out_proj multiply."""
    return t.transpose(1, 2).reshape(-1, t.shape[1])


def _projections(x_dbl, dt_proj_weight, batch, seqlen, dstate):
    """From x_dbl [b*L, dt_rank + 2n]: delta [b, d, L] (stored [d, b*L]) and B, C [b, n, L] (contiguous)."""
    dim, dt_rank = dt_proj_weight.shape
    delta = (dt_proj_weight @ x_dbl[:, :dt_rank].t()).view(dim, batch, seqlen).transpose(0, 1)
    B, C = (part.reshape(batch, seqlen, dstate).transpose(1, 2).contiguous()
            for part in x_dbl[:, dt_rank:].split(dstate, dim=1))
    return delta, B, C


class _Mamba1Inner(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, xz, conv1d_weight, conv1d_bias, x_proj_weight, dt_proj_weight, out_proj_weight,
                out_proj_bias, A, D, dt_bias):
        batch, _, seqlen = xz.shape
        dstate = A.shape[1]
        ctx.dtypes = (conv1d_weight.dtype, A.dtype, D.dtype, dt_bias.dtype)
        ctx.weight_dtypes = (x_proj_weight.dtype, dt_proj_weight.dtype, out_proj_weight.dtype,
                             None if out_proj_bias is None else out_proj_bias.dtype)
        if torch.is_autocast_enabled("cuda"):
            dtype = torch.get_autocast_dtype("cuda")
            x_proj_weight, dt_proj_weight, out_proj_weight = (
                w.to(dtype) for w in (x_proj_weight, dt_proj_weight, out_proj_weight))
            out_proj_bias = None if out_proj_bias is None else out_proj_bias.to(dtype)
        conv_weight = conv1d_weight.squeeze(1).contiguous()
        x, z = xz.chunk(2, dim=1)
        u = _conv(x, conv_weight, conv1d_bias)
        x_dbl = F.linear(_position_rows(u), x_proj_weight)
        delta, B, C = _projections(x_dbl, dt_proj_weight, batch, seqlen, dstate)
        A, D, dt_bias = A.float().contiguous(), D.float().contiguous(), dt_bias.float().contiguous()
        y, states, _ = _scan_forward(u, delta, A, B, C, D, z, dt_bias, True, True, False,
                                     forward_config(backward_kernel(u.device, dstate)[1]))
        ctx.save_for_backward(xz, conv_weight, conv1d_bias, x_dbl, x_proj_weight, dt_proj_weight, out_proj_weight,
                              A, D, dt_bias, states, y)
        return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dout):
        (xz, conv_weight, conv_bias, x_dbl, x_proj_weight, dt_proj_weight, out_proj_weight, A, D, dt_bias, states,
         y) = ctx.saved_tensors
        batch, _, seqlen = xz.shape
        dim, dt_rank, dstate = dt_proj_weight.shape[0], dt_proj_weight.shape[1], A.shape[1]
        x, z = xz.chunk(2, dim=1)
        # The convolution and dt_proj again; x_dbl was kept, so x_proj is not rerun.
        u = _conv(x, conv_weight, conv_bias)
        delta, B, C = _projections(x_dbl, dt_proj_weight, batch, seqlen, dstate)
        dout_flat = dout.reshape(batch * seqlen, -1).to(out_proj_weight.dtype)
        dy = (out_proj_weight.t() @ dout_flat.t()).view(dim, batch, seqlen).transpose(0, 1)
        dxz = torch.empty_like(xz)
        dx, dz = dxz.chunk(2, dim=1)
        kernel, config = backward_kernel(u.device, dstate)
        du, ddelta, dA, dB, dC, dD, _, ddt_bias = _scan_backward(
            u, delta, A, B, C, D, z, dt_bias, dy, None, states, True, config,
            du=_rows(batch, dim, seqlen, u), ddelta=_rows(batch, dim, seqlen, delta), dz=dz, kernel=kernel)
        ddelta_flat = _flat(ddelta)
        dx_dbl = torch.empty_like(x_dbl)
        dx_dbl[:, :dt_rank] = ddelta_flat.t() @ dt_proj_weight
        dx_dbl[:, dt_rank:dt_rank + dstate] = dB.view(batch * seqlen, dstate)
        dx_dbl[:, dt_rank + dstate:] = dC.view(batch * seqlen, dstate)
        x_proj_dtype, dt_proj_dtype, out_proj_dtype, out_bias_dtype = ctx.weight_dtypes
        ddt_proj_weight = weight_grad(ddelta_flat, x_dbl[:, :dt_rank], dt_proj_dtype)
        dx_proj_weight = weight_grad(dx_dbl.t(), _position_rows(u), x_proj_dtype)
        du_flat = _flat(du)
        torch.addmm(du_flat, x_proj_weight.t(), dx_dbl.t(), out=du_flat)
        dout_proj_weight = weight_grad(dout_flat.t(), _position_rows(y), out_proj_dtype)
        dout_proj_bias = None if out_bias_dtype is None else dout_flat.sum(0, dtype=out_bias_dtype)
        _, dconv_weight, dconv_bias, _ = kernel_module(_CONV).causal_conv1d_bwd_function(
            x, conv_weight, conv_bias, du, None, None, None, dx, False, True)
        conv_dtype, A_dtype, D_dtype, bias_dtype = ctx.dtypes
        return (dxz, dconv_weight.unsqueeze(1).to(conv_dtype), dconv_bias, dx_proj_weight, ddt_proj_weight,
                dout_proj_weight, dout_proj_bias, dA.to(A_dtype), dD.to(D_dtype), ddt_bias.to(bias_dtype))


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
    """:func:`kotomamba.ops.fused.mamba1_inner_ref`'s arguments and result: xz [b, 2*d_inner, L] -> [b, L, d_model].
    CUDA only."""
    return _Mamba1Inner.apply(xz, conv1d_weight, conv1d_bias, x_proj_weight, dt_proj_weight, out_proj_weight,
                              out_proj_bias, A, D, dt_bias)
